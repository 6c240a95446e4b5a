//! Redis Streams consumers through the inbox (feature `redis`): a [`RedisConsumer`] reads a
//! consumer group's entries (`XREADGROUP`), [`RedisConsumer::process`] runs each through the
//! [`Inbox`] and only then acknowledges it (`XACK`).
//!
//! An entry whose consumer crashed — between its commit and its `XACK`, or before — stays in
//! the group's pending entries; once it has been idle for [`RedisConsumer::min_idle`], a
//! consumer of the group claims it (`XAUTOCLAIM`) before reading new entries, and the inbox
//! drops it if its effect was committed. A handler error leaves the entry pending the same way:
//! it is delivered again after `min_idle`.
//!
//! The id is the entry's `id` field (set to the event id by the outbox's
//! [`RedisSink`](crate::sinks::redis::RedisSink)); the headers are the `headers` field's JSON.
//!
//! ```no_run
//! # type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), BoxError> {
//! use outbox::inbox::Inbox;
//! use outbox::inbox::redis::RedisConsumer;
//!
//! let consumer =
//!     RedisConsumer::connect("redis://127.0.0.1:6379", "events:account", "read-model", "worker-1")
//!         .await?;
//! loop {
//!     for entry in consumer.next_batch().await? {
//!         let payload = entry.field("payload").unwrap_or_default().to_owned();
//!         consumer
//!             .process(&Inbox::DEFAULT, &pool, "read-model", &entry, |tx| {
//!                 Box::pin(async move {
//!                     let event: serde_json::Value = serde_json::from_str(&payload)?;
//!                     sqlx::query("INSERT INTO seen (n) VALUES ($1)")
//!                         .bind(event["n"].as_i64())
//!                         .execute(&mut **tx)
//!                         .await?;
//!                     Ok::<_, BoxError>(())
//!                 })
//!             })
//!             .await?;
//!     }
//! }
//! # }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::{Handler, Inbox, InboxMessage, Processed, process_then_acknowledge};
use crate::Error;
use crate::inbox::InboxSql;

const BROKER: &str = "Redis Streams";

/// One entry of a stream, as its consumer group delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream it is an entry of.
    pub stream: String,
    /// Its entry id (`1733300000000-0`): what `XACK` names.
    pub entry_id: String,
    /// Its fields, as text.
    pub fields: HashMap<String, String>,
}

impl Entry {
    /// The value of the field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    fn from_reply(stream: &str, entry: StreamId) -> Entry {
        let fields = entry
            .map
            .into_iter()
            .filter_map(|(name, value)| {
                ::redis::from_redis_value::<String>(value)
                    .ok()
                    .map(|value| (name, value))
            })
            .collect();
        Entry {
            stream: stream.to_owned(),
            entry_id: entry.id,
            fields,
        }
    }
}

impl InboxMessage for Entry {
    fn message_id(&self) -> Result<String, Error> {
        self.field("id")
            .map(str::to_owned)
            .ok_or(Error::MissingMessageId {
                broker: BROKER,
                expected: "an `id` field",
            })
    }

    fn header(&self, name: &str) -> Option<String> {
        let headers: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(self.field("headers")?).ok()?;
        headers.get(name)?.as_str().map(str::to_owned)
    }

    fn destination(&self) -> Option<crate::sink::Destination> {
        Some(crate::sink::Destination::new("redis", &self.stream))
    }
}

/// A consumer of one group on one stream: reads, claims what crashed consumers left, processes
/// through the inbox, acknowledges. See the [module](self).
#[derive(Clone)]
pub struct RedisConsumer {
    connection: ConnectionManager,
    stream: String,
    group: String,
    name: String,
    min_idle: Duration,
    count: usize,
    block: Duration,
}

impl std::fmt::Debug for RedisConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConsumer")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("name", &self.name)
            .field("min_idle", &self.min_idle)
            .finish_non_exhaustive()
    }
}

impl RedisConsumer {
    /// Connects to `url` and joins `group` on `stream` as the consumer `name`, creating the
    /// group (reading from the stream's start) and the stream if they do not exist.
    pub async fn connect(
        url: &str,
        stream: &str,
        group: &str,
        name: &str,
    ) -> Result<RedisConsumer, ::redis::RedisError> {
        let client = ::redis::Client::open(url)?;
        let mut connection = ConnectionManager::new(client).await?;
        let created: Result<(), _> = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Err(error) if error.code() == Some("BUSYGROUP") => {} // it exists
            other => other?,
        }
        Ok(RedisConsumer {
            connection,
            stream: stream.to_owned(),
            group: group.to_owned(),
            name: name.to_owned(),
            min_idle: Duration::from_secs(30),
            count: 100,
            block: Duration::from_secs(1),
        })
    }

    /// How long an entry stays pending with another consumer (crashed, or whose handler failed)
    /// before this one claims it (default 30 s: longer than a handler takes).
    pub fn min_idle(mut self, idle: Duration) -> Self {
        self.min_idle = idle;
        self
    }

    /// Most entries per batch (default 100).
    pub fn count(mut self, count: usize) -> Self {
        self.count = count.max(1);
        self
    }

    /// How long [`next_batch`](Self::next_batch) waits for new entries (default 1 s).
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// The next entries to process: first those pending for longer than `min_idle` (claimed
    /// for this consumer), else new ones, waiting up to `block` for them. Empty when none came.
    pub async fn next_batch(&self) -> Result<Vec<Entry>, ::redis::RedisError> {
        let mut connection = self.connection.clone();
        let claimed: StreamAutoClaimReply = ::redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.name)
            .arg(u64::try_from(self.min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg("0-0")
            .arg("COUNT")
            .arg(self.count)
            .query_async(&mut connection)
            .await?;
        if !claimed.claimed.is_empty() {
            return Ok(claimed
                .claimed
                .into_iter()
                .map(|entry| Entry::from_reply(&self.stream, entry))
                .collect());
        }
        let read: Option<StreamReadReply> = ::redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(self.count)
            .arg("BLOCK")
            .arg(u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut connection)
            .await?;
        Ok(read
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| {
                let stream = key.key;
                key.ids
                    .into_iter()
                    .map(move |entry| Entry::from_reply(&stream, entry))
            })
            .collect())
    }

    /// Processes `entry` exactly once for `consumer` (see [`Inbox::process`]), then acknowledges
    /// it (`XACK`): after the commit, or at once for a duplicate. A handler error rolls back and
    /// leaves the entry pending: it is claimed again after `min_idle`. An entry without an id
    /// is neither processed nor acknowledged: the error says so.
    pub async fn process<DB, T, E, F>(
        &self,
        inbox: &Inbox,
        pool: &sqlx::Pool<DB>,
        consumer: &str,
        entry: &Entry,
        handler: F,
    ) -> Result<Processed<T>, E>
    where
        DB: InboxSql,
        E: From<Error>,
        F: for<'c> FnOnce(&'c mut sqlx::Transaction<'static, DB>) -> Handler<'c, T, E>,
    {
        process_then_acknowledge(
            inbox,
            pool,
            consumer,
            entry,
            handler,
            BROKER,
            || self.acknowledge(entry),
            || async { Ok(()) }, // left pending: claimed again after `min_idle`
        )
        .await
    }

    /// `XACK`s `entry`: the group forgets it.
    pub async fn acknowledge(&self, entry: &Entry) -> Result<(), String> {
        let mut connection = self.connection.clone();
        let _: i64 = ::redis::cmd("XACK")
            .arg(&entry.stream)
            .arg(&self.group)
            .arg(&entry.entry_id)
            .query_async(&mut connection)
            .await
            .map_err(|error| error.to_string())?;
        Ok(())
    }
}
