//! The broker side of an audit: every message a broker holds, read with its own client, in the
//! broker's order, leaving the messages where they are. Each reader stops at what the broker
//! held when it started (new messages may arrive meanwhile; they are left for the next audit).
//!
//! | reader | feature | reads | event id from |
//! | --- | --- | --- | --- |
//! | [`nats`] | `nats` | a JetStream stream (optionally one subject filter), through an ephemeral consumer | header `outbox-event-id`, else `Nats-Msg-Id` |
//! | [`kafka`] | `kafka` | every partition of a topic, from its low to its high watermark, then on until it is quiet for 2 s | header `outbox-event-id` |
//! | [`redis`] | `redis` | a stream key, with `XRANGE` | field `id` |
//! | [`rabbitmq`] | `rabbitmq` | a queue, with `basic.get` and no acknowledgement: the messages go back to the queue when the audit's channel closes (RabbitMQ marks them redelivered) | `message_id`, else header `outbox-event-id` |

#[cfg(any(
    feature = "nats",
    feature = "kafka",
    feature = "redis",
    feature = "rabbitmq"
))]
use super::Observed;

/// A broker could not be read: unreachable, refused, or the stream, topic or queue is not
/// there.
#[derive(Debug, thiserror::Error)]
#[error("audit: cannot read {what} from {broker}: {problem}")]
#[non_exhaustive]
pub struct ReadError {
    /// Which broker.
    pub broker: &'static str,
    /// The stream, topic or queue.
    pub what: String,
    /// What went wrong.
    pub problem: String,
}

impl ReadError {
    #[cfg(any(
        feature = "nats",
        feature = "kafka",
        feature = "redis",
        feature = "rabbitmq"
    ))]
    fn new(broker: &'static str, what: &str, problem: impl std::fmt::Display) -> Self {
        ReadError {
            broker,
            what: what.to_owned(),
            problem: problem.to_string(),
        }
    }
}

/// How long a reader waits for the broker to answer one request.
#[cfg(any(feature = "nats", feature = "kafka"))]
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// The messages of JetStream stream `stream` (those of subject `filter` only, when given), in
/// stream order; `position` is the stream sequence.
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub async fn nats(
    client: &async_nats::Client,
    stream: &str,
    filter: Option<&str>,
) -> Result<Vec<Observed>, ReadError> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures_util::StreamExt;

    let error = |problem: &dyn std::fmt::Display| ReadError::new("NATS", stream, problem);
    let context = async_nats::jetstream::new(client.clone());
    let mut handle = context.get_stream(stream).await.map_err(|e| error(&e))?;
    let last = handle
        .info()
        .await
        .map_err(|e| error(&e))?
        .state
        .last_sequence;
    let mut observed = Vec::new();
    if last == 0 {
        return Ok(observed);
    }
    let consumer = handle
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            filter_subject: filter.unwrap_or_default().to_owned(),
            inactive_threshold: std::time::Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| error(&e))?;
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1_000)
            .expires(PATIENCE / 5)
            .messages()
            .await
            .map_err(|e| error(&e))?;
        let mut got = 0;
        let mut done = false;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| error(&e))?;
            got += 1;
            let info = message.info().map_err(|e| error(&e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(name))
                    .map(|value| value.as_str().to_owned())
            };
            let id = header(crate::sinks::EVENT_ID).or_else(|| header("Nats-Msg-Id"));
            observed.push(Observed::new(id.as_deref(), sequence.to_string()));
            done |= pending == 0 || sequence >= last;
        }
        // An empty fetch: nothing more matches the filter.
        if done || got == 0 {
            return Ok(observed);
        }
    }
}

/// The records of Kafka topic `topic` at `bootstrap`, every partition from its low to its high
/// watermark, each partition in offset order; `position` is `partition/offset`. Reads with a
/// consumer of its own that commits nothing.
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub async fn kafka(bootstrap: &str, topic: &str) -> Result<Vec<Observed>, ReadError> {
    let (bootstrap, name) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || kafka_blocking(&bootstrap, &name))
        .await
        .map_err(|e| ReadError::new("Kafka", topic, e))?
}

#[cfg(feature = "kafka")]
fn kafka_blocking(bootstrap: &str, topic: &str) -> Result<Vec<Observed>, ReadError> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let error = |problem: &dyn std::fmt::Display| ReadError::new("Kafka", topic, problem);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("outbox-audit-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| error(&e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), PATIENCE)
        .map_err(|e| error(&e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(error(&"no such topic"));
    }
    // Per partition, the offset to read up to (exclusive).
    let mut until = std::collections::HashMap::new();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, PATIENCE)
            .map_err(|e| error(&e))?;
        if high > low {
            until.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, rdkafka::Offset::Offset(low))
                .map_err(|e| error(&e))?;
        }
    }
    let mut observed = Vec::new();
    if until.is_empty() {
        return Ok(observed);
    }
    consumer.assign(&assignment).map_err(|e| error(&e))?;
    while !until.is_empty() {
        let message = match consumer.poll(PATIENCE) {
            None => {
                return Err(error(&format!(
                    "no record for {}s with {} partitions unread",
                    PATIENCE.as_secs(),
                    until.len()
                )));
            }
            Some(message) => message.map_err(|e| error(&e))?,
        };
        let (partition, offset) = (message.partition(), message.offset());
        observed.push(Observed::new(
            event_id(&message).as_deref(),
            format!("{partition}/{offset}"),
        ));
        if until
            .get(&partition)
            .is_some_and(|&high| offset + 1 >= high)
        {
            until.remove(&partition);
        }
    }
    // A broker may serve records past the high watermark it reported (tansu did, for the last
    // records of a partition written by several producers at once): read on until the
    // partitions have been quiet for a while.
    while let Some(message) = consumer.poll(QUIET) {
        let message = message.map_err(|e| error(&e))?;
        observed.push(Observed::new(
            event_id(&message).as_deref(),
            format!("{}/{}", message.partition(), message.offset()),
        ));
    }
    Ok(observed)
}

/// How long a Kafka topic must stay quiet, once its high watermarks are reached, for the read
/// to end.
#[cfg(feature = "kafka")]
const QUIET: std::time::Duration = std::time::Duration::from_secs(2);

/// The outbox event id a Kafka record carries in its headers.
#[cfg(feature = "kafka")]
fn event_id(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    use rdkafka::Message as _;
    use rdkafka::message::Headers;
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == crate::sinks::EVENT_ID)
            .and_then(|header| header.value)
            .and_then(|value| std::str::from_utf8(value).ok().map(str::to_owned))
    })
}

/// The entries of Redis stream `key` at `url`, oldest first; `position` is the entry id.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub async fn redis(url: &str, key: &str) -> Result<Vec<Observed>, ReadError> {
    use redis::AsyncCommands as _;
    use redis::streams::StreamRangeReply;

    let error = |problem: &dyn std::fmt::Display| ReadError::new("Redis", key, problem);
    let client = redis::Client::open(url).map_err(|e| error(&e))?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| error(&e))?;
    let mut observed = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: StreamRangeReply = connection
            .xrange_count(key, &start, "+", 1_000)
            .await
            .map_err(|e| error(&e))?;
        let Some(last) = page.ids.last() else {
            return Ok(observed);
        };
        start = format!("({}", last.id);
        for entry in &page.ids {
            let id: Option<String> = entry.get(crate::sinks::fields::ID);
            observed.push(Observed::new(id.as_deref(), entry.id.clone()));
        }
    }
}

/// The messages of RabbitMQ queue `queue` at `url`, in queue order; `position` is the place in
/// the queue (1 first). They are taken unacknowledged and go back to the queue when the
/// audit's channel closes, in their order, marked redelivered; a consumer attached to the queue
/// meanwhile gets those the audit has not taken yet, so audit a queue no one consumes.
#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub async fn rabbitmq(url: &str, queue: &str) -> Result<Vec<Observed>, ReadError> {
    use lapin::options::{BasicGetOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};

    let error = |problem: &dyn std::fmt::Display| ReadError::new("RabbitMQ", queue, problem);
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .map_err(|e| error(&crate::sinks::redacted(&e.to_string())))?;
    let channel = connection.create_channel().await.map_err(|e| error(&e))?;
    // Passive: the queue must exist; it is never created by an audit.
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| error(&e))?;
    let held = declared.message_count();
    let mut observed = Vec::new();
    while observed.len() < held as usize {
        let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| error(&e))?
        else {
            break;
        };
        let properties = &message.delivery.properties;
        let id = properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .or_else(|| {
                let headers = properties.headers().as_ref()?;
                match headers.inner().get(crate::sinks::EVENT_ID)? {
                    AMQPValue::LongString(id) => Some(id.to_string()),
                    AMQPValue::ShortString(id) => Some(id.to_string()),
                    _ => None,
                }
            });
        observed.push(Observed::new(
            id.as_deref(),
            (observed.len() + 1).to_string(),
        ));
    }
    // Closing the channel returns every unacknowledged message to the queue.
    channel
        .close(200, "audit done".into())
        .await
        .map_err(|e| error(&e))?;
    let _ = connection.close(200, "audit done".into()).await;
    Ok(observed)
}
