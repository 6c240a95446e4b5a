//! What flows through the relay: the [`Message`] a source hands to a sink, and the
//! [`DeadLetter`] an event becomes when it fails for good. A leaf: it imports nothing else of
//! this crate, so that sources, sinks, the stores and the inbox can all depend on it.

use std::time::Duration;

/// One outbox event, as the relay hands it to a [`Sink`](crate::sink::Sink).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The event id (UUIDv7): use it as the message id downstream, so that brokers and consumer
    /// inboxes can drop redeliveries.
    pub id: uuid::Uuid,
    /// Insertion number in the outbox table.
    pub seq: i64,
    /// Aggregate type: the default topic.
    pub aggregate_type: String,
    /// Aggregate id: the ordering key.
    pub aggregate_id: String,
    /// Event type.
    pub event_type: String,
    /// The payload, as JSON text.
    pub payload: String,
    /// Headers recorded with the event (JSON object text), if any.
    pub headers: Option<String>,
    /// Failed deliveries before this one.
    pub attempts: i32,
}

impl Message {
    /// A message for the relay, made by a [source](crate::relay::source::Source) of your own: `id` is
    /// the event id consumers deduplicate on (keep it across redeliveries), `seq` the position
    /// by which the source knows it again in the [`Settlement`](crate::relay::source::Settlement), and
    /// `payload` JSON text. No headers, no failed attempts yet.
    pub fn new(
        id: uuid::Uuid,
        seq: i64,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: impl Into<String>,
    ) -> Self {
        Message {
            id,
            seq,
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload: payload.into(),
            headers: None,
            attempts: 0,
        }
    }

    /// With the headers recorded with the event (a JSON object's text).
    pub fn with_headers(mut self, headers: impl Into<String>) -> Self {
        self.headers = Some(headers.into());
        self
    }

    /// With the number of failed deliveries so far: the relay dead-letters the message once
    /// this attempt reaches [`max_attempts`](crate::relay::RelayBuilder::max_attempts).
    pub fn with_attempts(mut self, attempts: i32) -> Self {
        self.attempts = attempts;
        self
    }
}

/// An event that failed for good: kept in the outbox with its last error, until replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The event.
    pub message: Message,
    /// The sink's last error.
    pub last_error: String,
    /// How long ago it became a dead letter.
    pub dead_for: std::time::Duration,
}

/// Which dead letters a query selects: every one by default, each setting narrowing it. The
/// database applies it, so listing ten among a million reads ten rows.
///
/// ```
/// use std::time::Duration;
/// use outbox::relay::DeadLetterFilter;
///
/// let filter = DeadLetterFilter::new()
///     .event_type("MoneyTransferred")
///     .dead_for_at_least(Duration::from_secs(3600));
/// # drop(filter);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterFilter {
    /// Only the event with this id.
    pub id: Option<uuid::Uuid>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events of this aggregate type.
    pub aggregate_type: Option<String>,
    /// Only events of this aggregate id.
    pub aggregate_id: Option<String>,
    /// Only events dead for at least this long.
    pub dead_for_at_least: Option<Duration>,
}

impl DeadLetterFilter {
    /// Every dead letter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only the event with this id.
    pub fn id(mut self, id: uuid::Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Only events of this type.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Only events of this aggregate type.
    pub fn aggregate_type(mut self, aggregate_type: impl Into<String>) -> Self {
        self.aggregate_type = Some(aggregate_type.into());
        self
    }

    /// Only events of this aggregate id.
    pub fn aggregate_id(mut self, aggregate_id: impl Into<String>) -> Self {
        self.aggregate_id = Some(aggregate_id.into());
        self
    }

    /// Only events dead for at least `age`.
    pub fn dead_for_at_least(mut self, age: Duration) -> Self {
        self.dead_for_at_least = Some(age);
        self
    }
}
