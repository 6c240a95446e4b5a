//! NATS JetStream consumers through the inbox (feature `nats`): [`process`] runs a message
//! through the [`Inbox`] and only then acknowledges it.
//!
//! The id is the `outbox-event-id` header (set by the outbox's [`NatsSink`](crate::sinks::nats::NatsSink)),
//! else `Nats-Msg-Id`. The acknowledgement waits for the server's confirmation (`double_ack`);
//! if the consumer crashes between the commit and that confirmation, JetStream redelivers the
//! message and the inbox drops it.
//!
//! ```no_run
//! # type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # async fn demo(pool: sqlx::PgPool, messages: async_nats::jetstream::consumer::pull::Stream) -> Result<(), BoxError> {
//! use futures_util::StreamExt;
//! use outbox::inbox::{Inbox, nats::process};
//!
//! let mut messages = messages;
//! while let Some(message) = messages.next().await {
//!     let message = message?;
//!     let payload = message.payload.clone();
//!     process(&Inbox::DEFAULT, &pool, "read-model", &message, |tx| {
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
//! # Ok(()) }
//! ```

use async_nats::jetstream::{AckKind, Message};

use super::{Handler, Inbox, InboxMessage, Processed, process_then_acknowledge};
use crate::inbox::InboxSql;
use crate::{Error, sinks};

impl InboxMessage for Message {
    fn message_id(&self) -> Result<String, Error> {
        let header = |name: &str| {
            self.headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        header(sinks::EVENT_ID)
            .or_else(|| header("Nats-Msg-Id"))
            .ok_or(Error::MissingMessageId {
                broker: "NATS",
                expected: "an `outbox-event-id` or `Nats-Msg-Id` header",
            })
    }

    fn header(&self, name: &str) -> Option<String> {
        let value = self.headers.as_ref()?.get(name)?;
        Some(value.as_str().to_owned())
    }

    fn destination(&self) -> Option<crate::sink::Destination> {
        Some(crate::sink::Destination::new("nats", self.subject.as_str()))
    }
}

/// Processes `message` exactly once for `consumer` (see [`Inbox::process`]), then acknowledges
/// it: after the commit, or at once for a duplicate. A handler error rolls back and
/// negatively acknowledges the message, so that JetStream redelivers it. A message without an
/// id is neither processed nor acknowledged: the error says so.
pub async fn process<DB, T, E, F>(
    inbox: &Inbox,
    pool: &sqlx::Pool<DB>,
    consumer: &str,
    message: &Message,
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
        message,
        handler,
        "NATS",
        || async { message.double_ack().await.map_err(|e| e.to_string()) },
        || async {
            let nak = message.ack_with(AckKind::Nak(None)).await;
            nak.map_err(|e| e.to_string())
        },
    )
    .await
}
