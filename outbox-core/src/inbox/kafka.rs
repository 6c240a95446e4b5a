//! Kafka consumers (feature `kafka`), two ways:
//!
//! * **Inbox mode**, [`process`]: runs a record through the [`Inbox`] (its event id recorded
//!   with the handler's writes), and only then commits its offset to Kafka. Every *event* is
//!   applied once, even one the producer published twice.
//! * **Offset mode**, [`OffsetConsumer`]: the partition's next offset is committed in the
//!   database with the handler's writes, and the consumer resumes from it on start and on
//!   every rebalance. No row per message, no purge; every *record* is applied once (see
//!   [`Offsets`] for the difference).
//!
//! Inbox mode:
//!
//! Consume with `enable.auto.commit=false` in a consumer group. After the commit of the
//! record's effect, the helper commits the offset after it, and waits for the broker to confirm
//! it (a commit lost in a crash only means the record comes again, and the inbox drops it;
//! asynchronous commits, tried first, let tansu skip records after a consumer died). A handler
//! error rolls back and seeks the partition back to the record, so that it is fetched again.
//! Records are taken as [`OwnedMessage`]s (`message.detach()`), which a task may hold across an
//! `.await`.
//!
//! The id is the `outbox-event-id` header that the outbox's
//! [`KafkaSink`](crate::sinks::kafka::KafkaSink) sets.
//!
//! ```no_run
//! # type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), BoxError> {
//! use outbox::inbox::{Inbox, kafka::process};
//! use outbox::sinks::kafka::rdkafka;
//! use rdkafka::Message as _;
//! use rdkafka::consumer::{Consumer, StreamConsumer};
//!
//! let consumer: StreamConsumer = rdkafka::ClientConfig::new()
//!     .set("bootstrap.servers", "127.0.0.1:9092")
//!     .set("group.id", "read-model")
//!     .set("enable.auto.commit", "false")
//!     .set("auto.offset.reset", "earliest")
//!     .create()?;
//! consumer.subscribe(&["bank.account"])?;
//! loop {
//!     let record = consumer.recv().await?.detach();
//!     let payload = record.payload().unwrap_or_default().to_vec();
//!     process(&Inbox::DEFAULT, &pool, "read-model", &consumer, &record, |tx| {
//!         Box::pin(async move {
//!             let event: serde_json::Value = serde_json::from_slice(&payload)?;
//!             sqlx::query("INSERT INTO seen (n) VALUES ($1)")
//!                 .bind(event["n"].as_i64())
//!                 .execute(&mut **tx)
//!                 .await?;
//!             Ok::<_, BoxError>(())
//!         })
//!     })
//!     .await?;
//! }
//! # }
//! ```

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::{Handler, Inbox, InboxMessage, Offsets, Position, Processed, process_then_acknowledge};
use crate::inbox::InboxSql;
use crate::{Error, sinks};

const BROKER: &str = "Kafka";

impl InboxMessage for OwnedMessage {
    fn message_id(&self) -> Result<String, Error> {
        self.header(sinks::EVENT_ID).ok_or(Error::MissingMessageId {
            broker: BROKER,
            expected: "an `outbox-event-id` header",
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers()?
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
            .and_then(|value| std::str::from_utf8(value).ok())
            .map(str::to_owned)
    }

    fn destination(&self) -> Option<crate::sink::Destination> {
        Some(crate::sink::Destination::new("kafka", self.topic()))
    }
}

/// Processes `record` exactly once for `consumer` (see [`Inbox::process`]), then commits the
/// offset after it: after the commit of its effect, or at once for a duplicate. A handler error
/// rolls back and seeks the record's partition back to it, so that it is fetched again. A
/// record without an id is neither processed nor committed: the error says so.
pub async fn process<C, DB, T, E, F>(
    inbox: &Inbox,
    pool: &sqlx::Pool<DB>,
    consumer: &str,
    kafka: &StreamConsumer<C>,
    record: &OwnedMessage,
    handler: F,
) -> Result<Processed<T>, E>
where
    C: ConsumerContext + 'static,
    DB: InboxSql,
    E: From<Error>,
    F: for<'c> FnOnce(&'c mut sqlx::Transaction<'static, DB>) -> Handler<'c, T, E>,
{
    let (topic, partition, offset) = (record.topic(), record.partition(), record.offset());
    process_then_acknowledge(
        inbox,
        pool,
        consumer,
        record,
        handler,
        BROKER,
        || async move {
            let mut next = TopicPartitionList::new();
            next.add_partition_offset(topic, partition, Offset::Offset(offset + 1))
                .map_err(|error| error.to_string())?;
            // librdkafka's synchronous commit blocks its thread until the broker answers: off
            // the runtime's worker where the runtime allows it.
            let commit = || {
                kafka
                    .commit(&next, CommitMode::Sync)
                    .map_err(|error| error.to_string())
            };
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                    tokio::task::block_in_place(commit)
                }
                _ => commit(),
            }
        },
        || async move {
            kafka
                .seek(
                    topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(10),
                )
                .map_err(|error| error.to_string())
        },
    )
    .await
}

/// A Kafka consumer in **offset mode**: each record's effect and its partition's next offset
/// are committed in one database transaction ([`Offsets`]), and every partition the group
/// assigns it is read from the stored offset — on start and on every rebalance — so a record
/// is never applied twice, with no row per message. Kafka's own committed offsets are neither
/// written nor trusted while the database holds one (a partition without a stored offset
/// starts at the group's committed offset, else at `auto.offset.reset`).
///
/// How: its client's [`OffsetContext`] holds each new assignment back from librdkafka
/// instead of taking it at once; [`recv`](OffsetConsumer::recv) reads the assigned
/// partitions' stored offsets from the database and only then assigns them, from those
/// offsets. A second member still processing a partition it lost (a rebalance) waits on the
/// partition's row and then sees its record applied.
///
/// See [`Offsets`] for what offset mode guarantees (each record once) and when to choose the
/// inbox instead (each event once, whatever the producer republished).
///
/// ```no_run
/// # type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), BoxError> {
/// use outbox::inbox::Offsets;
/// use outbox::inbox::kafka::OffsetConsumer;
/// use outbox::sinks::kafka::rdkafka;
/// use rdkafka::Message as _;
///
/// Offsets::DEFAULT.migrate(&pool).await?;
/// let mut config = rdkafka::ClientConfig::new();
/// config
///     .set("bootstrap.servers", "127.0.0.1:9092")
///     .set("group.id", "read-model")
///     .set("auto.offset.reset", "earliest");
/// let consumer = OffsetConsumer::new(&config, pool.clone(), Offsets::DEFAULT)?;
/// consumer.subscribe(&["bank.account"])?;
/// loop {
///     let record = consumer.recv().await?;
///     let payload = record.payload().unwrap_or_default().to_vec();
///     consumer
///         .process(&record, |tx| {
///             Box::pin(async move {
///                 let event: serde_json::Value = serde_json::from_slice(&payload)?;
///                 sqlx::query("UPDATE balances SET cents = cents + $1 WHERE account = $2")
///                     .bind(event["amount"].as_i64())
///                     .bind(event["account"].as_str())
///                     .execute(&mut **tx)
///                     .await?;
///                 Ok::<_, BoxError>(())
///             })
///         })
///         .await?;
/// }
/// # }
/// ```
pub struct OffsetConsumer<DB: InboxSql> {
    kafka: StreamConsumer<OffsetContext>,
    pool: sqlx::Pool<DB>,
    offsets: Offsets,
    group: String,
}

impl<DB: InboxSql> std::fmt::Debug for OffsetConsumer<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetConsumer")
            .field("group", &self.group)
            .field("offsets", &self.offsets)
            .finish_non_exhaustive()
    }
}

/// The client context of an [`OffsetConsumer`]: it takes librdkafka's rebalances, holding each
/// new assignment until the consumer has read its stored offsets.
#[derive(Debug, Default)]
pub struct OffsetContext {
    /// Partitions assigned by the group and not yet given to librdkafka.
    pending: Mutex<Vec<(String, i32)>>,
    /// Wakes a [`OffsetConsumer::recv`] waiting for records when an assignment arrives.
    assigned: tokio::sync::Notify,
}

impl ClientContext for OffsetContext {}

impl ConsumerContext for OffsetContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if !cooperative {
                    pending.clear();
                }
                pending.extend(
                    partitions
                        .elements()
                        .iter()
                        .map(|p| (p.topic().to_owned(), p.partition())),
                );
                drop(pending);
                self.assigned.notify_one();
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<(String, i32)> = partitions
                    .elements()
                    .iter()
                    .map(|p| (p.topic().to_owned(), p.partition()))
                    .collect();
                pending.retain(|p| !revoked.contains(p));
                drop(pending);
                let outcome = if cooperative {
                    base.incremental_unassign(partitions)
                } else {
                    base.unassign()
                };
                if let Err(error) = outcome {
                    tracing::warn!(%error, "Kafka unassign after a revocation failed");
                }
            }
            other => {
                tracing::warn!(error = ?other, "Kafka rebalance error");
            }
        }
    }
}

impl OffsetContext {
    fn take_pending(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn put_back(&self, partitions: Vec<(String, i32)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let newer = std::mem::replace(&mut *pending, partitions);
        pending.extend(newer);
    }
}

fn client_error(operation: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
    move |error| Error::Consumer {
        broker: BROKER,
        operation,
        problem: error.to_string(),
    }
}

impl<DB: InboxSql> OffsetConsumer<DB> {
    /// A consumer of the group `group.id` of `config`, keeping its offsets in `offsets` on
    /// `pool` (create the table with [`Offsets::migrate`]). Automatic offset commits are
    /// turned off: the database holds the offsets. Fails without a `group.id`, or when the
    /// client refuses the configuration.
    pub fn new(
        config: &rdkafka::ClientConfig,
        pool: sqlx::Pool<DB>,
        offsets: Offsets,
    ) -> Result<Self, Error> {
        let group = config
            .get("group.id")
            .filter(|group| !group.is_empty())
            .ok_or_else(|| Error::Consumer {
                broker: BROKER,
                operation: "start",
                problem: "the configuration has no `group.id`: offsets are kept per consumer \
                          group, set one"
                    .to_owned(),
            })?
            .to_owned();
        super::check_key(&group, "consumer group", &group)?;
        let mut config = config.clone();
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let kafka: StreamConsumer<OffsetContext> = config
            .create_with_context(OffsetContext::default())
            .map_err(client_error("start"))?;
        Ok(OffsetConsumer {
            kafka,
            pool,
            offsets,
            group,
        })
    }

    /// Subscribes to `topics`; the group assigns their partitions.
    pub fn subscribe(&self, topics: &[&str]) -> Result<(), Error> {
        self.kafka
            .subscribe(topics)
            .map_err(client_error("subscribe"))
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The Kafka client, for what this type does not wrap (its assignment, metadata, pausing).
    pub fn client(&self) -> &StreamConsumer<OffsetContext> {
        &self.kafka
    }

    /// The next record. Serves the group's rebalances on the way: partitions newly assigned
    /// are read from their stored offsets. Cancel-safe: a record is returned or left in the
    /// client.
    pub async fn recv(&self) -> Result<OwnedMessage, Error> {
        loop {
            let pending = self.kafka.context().take_pending();
            if !pending.is_empty() {
                if let Err(error) = self.assign(&pending).await {
                    // Taken again by the next call: librdkafka waits for the assignment.
                    self.kafka.context().put_back(pending);
                    return Err(error);
                }
                continue;
            }
            tokio::select! {
                biased;
                () = self.kafka.context().assigned.notified() => {}
                record = self.kafka.recv() => {
                    return record.map(|record| record.detach()).map_err(client_error("receive"));
                }
            }
        }
    }

    /// Gives librdkafka the assigned `partitions`, each from its stored offset.
    async fn assign(&self, partitions: &[(String, i32)]) -> Result<(), Error> {
        let mut assignment = TopicPartitionList::new();
        let mut topics: Vec<&str> = partitions.iter().map(|(topic, _)| topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in topics {
            let stored = self.offsets.stored(&self.pool, &self.group, topic).await?;
            for (_, partition) in partitions.iter().filter(|(t, _)| t == topic) {
                let offset = stored
                    .iter()
                    .find(|(p, _)| p == partition)
                    .map_or(Offset::Invalid, |&(_, next)| Offset::Offset(next));
                assignment
                    .add_partition_offset(topic, *partition, offset)
                    .map_err(client_error("assign"))?;
            }
        }
        tracing::debug!(group = %self.group, ?assignment, "assigned from the stored offsets");
        if matches!(
            self.kafka.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        ) {
            self.kafka.incremental_assign(&assignment)
        } else {
            self.kafka.assign(&assignment)
        }
        .map_err(client_error("assign"))
    }

    /// Processes `record` exactly once for the group (see [`Offsets::process`]): the
    /// partition's next offset is committed with the handler's writes. A record below the
    /// stored offset returns [`Processed::Duplicate`] without running the handler. A handler
    /// error rolls back and seeks the partition back to the record, so that it is read again.
    pub async fn process<T, E, F>(
        &self,
        record: &OwnedMessage,
        handler: F,
    ) -> Result<Processed<T>, E>
    where
        E: From<Error>,
        F: for<'c> FnOnce(&'c mut sqlx::Transaction<'static, DB>) -> Handler<'c, T, E>,
    {
        let (topic, partition, offset) = (record.topic(), record.partition(), record.offset());
        let at = Position::new(topic, partition, offset);
        let work = async {
            let outcome = self
                .offsets
                .process(&self.pool, &self.group, at, handler)
                .await;
            if outcome.is_err() {
                let sought = self.kafka.seek(
                    topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(10),
                );
                if let Err(error) = sought {
                    tracing::warn!(%error, topic, partition, offset, "seek back after a handler error failed");
                }
            }
            outcome
        };
        #[cfg(feature = "opentelemetry")]
        let work = {
            let id = record
                .message_id()
                .unwrap_or_else(|_| format!("{topic}/{partition}/{offset}"));
            async move { super::spans::processing(record, &id, &self.group, work).await }
        };
        work.await
    }
}
