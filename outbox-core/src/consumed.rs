//! What a consumer receives: any message with an id to deduplicate on ([`InboxMessage`]),
//! public under [`outbox::inbox`](crate::inbox). A leaf of the crate, beside the message and the
//! sink's destination, so that the inbox and the consumer spans both read it.

use crate::Error;
use crate::message::Message;

/// A message that has an id to deduplicate on: the outbox's own [`Message`](Message)
/// (its event id), a NATS JetStream message, a RabbitMQ delivery (with their features), or the
/// id itself (`&str`, `String`, `Uuid`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no message id the inbox can deduplicate on",
    label = "`{Self}` does not implement `InboxMessage`",
    note = "take the message as `outbox::relay::Message`, `async_nats::jetstream::Message`, `lapin::message::Delivery`, a Redis Streams `outbox::inbox::redis::Entry`, an MQTT `Publish` or a Kafka `OwnedMessage`, or its id as `&str`",
    note = "or implement `outbox::inbox::InboxMessage` for `{Self}`, returning the id its producer set"
)]
pub trait InboxMessage {
    /// The id; an error when the message carries none.
    fn message_id(&self) -> Result<String, Error>;

    /// The value of the header `name` the message carries (default: none): the inbox helpers
    /// read the trace context from it (feature `opentelemetry`).
    fn header(&self, name: &str) -> Option<String> {
        let _ = name;
        None
    }

    /// Where the message was consumed from (default: not said), for the consumer's span.
    fn destination(&self) -> Option<crate::sink::Destination> {
        None
    }
}

impl InboxMessage for Message {
    fn message_id(&self) -> Result<String, Error> {
        Ok(self.id.to_string())
    }

    fn header(&self, name: &str) -> Option<String> {
        let headers: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(self.headers.as_deref()?).ok()?;
        headers.get(name)?.as_str().map(str::to_owned)
    }
}

impl InboxMessage for uuid::Uuid {
    fn message_id(&self) -> Result<String, Error> {
        Ok(self.to_string())
    }
}

impl InboxMessage for str {
    fn message_id(&self) -> Result<String, Error> {
        Ok(self.to_owned())
    }
}

impl InboxMessage for String {
    fn message_id(&self) -> Result<String, Error> {
        Ok(self.clone())
    }
}

impl<M: InboxMessage + ?Sized> InboxMessage for &M {
    fn message_id(&self) -> Result<String, Error> {
        (**self).message_id()
    }

    fn header(&self, name: &str) -> Option<String> {
        (**self).header(name)
    }

    fn destination(&self) -> Option<crate::sink::Destination> {
        (**self).destination()
    }
}
