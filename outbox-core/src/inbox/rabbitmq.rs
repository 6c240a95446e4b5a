//! RabbitMQ consumers through the inbox (feature `rabbitmq`): [`process`] runs a delivery through
//! the [`Inbox`] and only then acknowledges it.
//!
//! The id is the message's `message_id` property (set to the event id by the outbox's
//! [`RabbitMqSink`](crate::sinks::rabbitmq::RabbitMqSink)), else its `outbox-event-id` header.
//! Consume with manual acknowledgements (`no_ack: false`): if the consumer crashes between the
//! commit and the ack, RabbitMQ redelivers the message and the inbox drops it.
//!
//! ```no_run
//! # type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # async fn demo(pool: sqlx::PgPool, mut consumer: lapin::Consumer) -> Result<(), BoxError> {
//! use futures_util::StreamExt;
//! use outbox::inbox::{Inbox, rabbitmq::process};
//!
//! while let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     let body = delivery.data.clone();
//!     process(&Inbox::DEFAULT, &pool, "read-model", &delivery, |tx| {
//!         Box::pin(async move {
//!             let event: serde_json::Value = serde_json::from_slice(&body)?;
//!             sqlx::query("INSERT INTO seen (n) VALUES ($1)")
//!                 .bind(event["n"].as_i64())
//!                 .execute(&mut **tx)
//!                 .await?;
//!             Ok::<_, BoxError>(())
//!         })
//!     })
//!     .await?;
//! }
//! # Ok(()) }
//! ```

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;

use super::{Handler, Inbox, InboxMessage, Processed, process_then_acknowledge};
use crate::inbox::InboxSql;
use crate::{Error, sinks};

impl InboxMessage for Delivery {
    fn message_id(&self) -> Result<String, Error> {
        if let Some(id) = self.properties.message_id() {
            return Ok(id.to_string());
        }
        let header = self
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(sinks::EVENT_ID));
        match header {
            Some(AMQPValue::LongString(id)) => Ok(id.to_string()),
            Some(AMQPValue::ShortString(id)) => Ok(id.to_string()),
            _ => Err(Error::MissingMessageId {
                broker: "RabbitMQ",
                expected: "a `message_id` property or an `outbox-event-id` header",
            }),
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            AMQPValue::LongString(value) => Some(value.to_string()),
            AMQPValue::ShortString(value) => Some(value.to_string()),
            _ => None,
        }
    }

    fn destination(&self) -> Option<crate::sink::Destination> {
        let destination = crate::sink::Destination::new("rabbitmq", self.exchange.as_str());
        Some(destination.with_routing_key(self.routing_key.as_str()))
    }
}

/// Processes `delivery` exactly once for `consumer` (see [`Inbox::process`]), then acknowledges
/// it: after the commit, or at once for a duplicate. A handler error rolls back and rejects the
/// delivery with `requeue`, so that it is delivered again. A delivery without an id is neither
/// processed nor acknowledged: the error says so.
pub async fn process<DB, T, E, F>(
    inbox: &Inbox,
    pool: &sqlx::Pool<DB>,
    consumer: &str,
    delivery: &Delivery,
    handler: F,
) -> Result<Processed<T>, E>
where
    DB: InboxSql,
    E: From<Error>,
    F: for<'c> FnOnce(&'c mut sqlx::Transaction<'static, DB>) -> Handler<'c, T, E>,
{
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    process_then_acknowledge(
        inbox,
        pool,
        consumer,
        delivery,
        handler,
        "RabbitMQ",
        || async {
            let acked = delivery.ack(BasicAckOptions::default()).await;
            acked.map(drop).map_err(|e| e.to_string())
        },
        || async {
            let nacked = delivery.nack(requeue).await;
            nacked.map(drop).map_err(|e| e.to_string())
        },
    )
    .await
}
