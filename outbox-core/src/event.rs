//! What can be recorded: events described by the derive, or assembled at the call site.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::Error;

/// An entity that describes itself as an outbox event: which aggregate it belongs to, which
/// event it is, and the id of its aggregate instance. The entity itself, serialized with serde,
/// is the payload.
///
/// Derive it rather than implementing it by hand:
///
/// ```
/// use outbox::OutboxEvent;
/// use serde::Serialize;
///
/// #[derive(Serialize, OutboxEvent)]
/// #[outbox(aggregate_type = "account", event_type = "AccountOpened")]
/// struct Account {
///     #[outbox(aggregate_id)]
///     id: i64,
///     owner: String,
/// }
///
/// let account = Account { id: 7, owner: "Ada".into() };
/// assert_eq!(Account::AGGREGATE_TYPE, "account");
/// assert_eq!(account.aggregate_id().as_deref(), Some("7"));
/// ```
///
/// The `#[outbox(aggregate_id)]` field may be any `Display` type, or an `Option` of one: `None`
/// means the entity was not persisted yet, and recording it fails with
/// [`Error::NotPersisted`](crate::Error::NotPersisted). `event_type` defaults to the type's name.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say how to record it in the outbox",
    label = "`{Self}` does not implement `OutboxEvent`",
    note = "derive it: `#[derive(Serialize, OutboxEvent)]` with `#[outbox(aggregate_type = \"...\")]` on the type and `#[outbox(aggregate_id)]` on its id field",
    note = "or give all three arguments to the attribute: `#[outbox_event(aggregate_type = \"...\", event_type = \"...\", aggregate_id = |entity| entity.id)]`"
)]
pub trait OutboxEvent: Serialize {
    /// The aggregate (entity kind) this event belongs to: routing key and ordering scope.
    const AGGREGATE_TYPE: &'static str;
    /// What happened, e.g. `TransactionCreatedEvent`.
    const EVENT_TYPE: &'static str;
    /// The event type's schema version, `#[outbox(version = N)]` (default: none). Recorded as
    /// the header [`outbox-event-version`](crate::sinks::EVENT_VERSION), so that consumers
    /// tell versions apart without parsing the payload, and shown in the event catalog.
    const VERSION: Option<u32> = None;
    /// The id of the aggregate instance, or `None` when the entity has no id yet.
    fn aggregate_id(&self) -> Option<String>;
}

/// Anything [`record`](crate::record) accepts: every [`OutboxEvent`], and an [`Event`]
/// assembled at the call site.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be recorded in the outbox",
    label = "expected an `OutboxEvent` or an `outbox::Event`",
    note = "derive `OutboxEvent` for it, or describe it at the call site: `outbox::Event::new(\"aggregate\", \"EventType\", Some(id), &value)?`"
)]
pub trait Recordable {
    /// Aggregate type of the event.
    fn aggregate_type(&self) -> &str;
    /// Event type of the event.
    fn event_type(&self) -> &str;
    /// Aggregate id, `None` when the entity has none yet.
    fn aggregate_id(&self) -> Option<Cow<'_, str>>;
    /// The payload as JSON.
    fn to_json(&self) -> Result<Cow<'_, str>, serde_json::Error>;
    /// Headers recorded with the event (trace context, tenant, …), carried by every sink.
    /// None by default.
    fn headers(&self) -> &[(String, String)] {
        &[]
    }
    /// The event type's schema version, if it has one.
    fn version(&self) -> Option<u32> {
        None
    }
    /// When the event may be published, if not at once ([`Event::deliver_after`]).
    fn schedule(&self) -> Option<Schedule> {
        None
    }
}

/// When a delayed event may be published: see [`Event::deliver_after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// This long after it is recorded, by the database's clock.
    After(Duration),
    /// At this instant (an instant already past: at once).
    At(SystemTime),
}

impl<T: OutboxEvent + ?Sized> Recordable for T {
    fn aggregate_type(&self) -> &str {
        T::AGGREGATE_TYPE
    }
    fn event_type(&self) -> &str {
        T::EVENT_TYPE
    }
    fn aggregate_id(&self) -> Option<Cow<'_, str>> {
        OutboxEvent::aggregate_id(self).map(Cow::Owned)
    }
    fn to_json(&self) -> Result<Cow<'_, str>, serde_json::Error> {
        serde_json::to_string(self).map(Cow::Owned)
    }
    fn version(&self) -> Option<u32> {
        T::VERSION
    }
}

/// An event described at the call site: metadata plus any `Serialize` value, serialized when
/// the `Event` is built. The manual counterpart of
/// `#[outbox_event(aggregate_type = ..., event_type = ..., aggregate_id = ...)]`, for types that
/// do not derive [`OutboxEvent`].
///
/// ```
/// use outbox::{Event, Recordable};
///
/// #[derive(serde::Serialize)]
/// struct Deposit { account: u64, amount: f64 }
///
/// let deposit = Deposit { account: 42, amount: 10.0 };
/// let event = Event::new("account", "MoneyDeposited", Some(deposit.account), &deposit)?;
/// assert_eq!(event.aggregate_id().as_deref(), Some("42"));
/// assert_eq!(event.to_json()?, r#"{"account":42,"amount":10.0}"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    aggregate_type: &'a str,
    event_type: &'a str,
    aggregate_id: Option<String>,
    payload: String,
    headers: Vec<(String, String)>,
    version: Option<u32>,
    schedule: Option<Schedule>,
}

impl<'a> Event<'a> {
    /// Describes `payload` as an event of `event_type` about the aggregate
    /// `aggregate_type`/`aggregate_id`, serializing it to JSON now. A `None` id makes recording
    /// fail with [`Error::NotPersisted`](crate::Error::NotPersisted).
    pub fn new<T: Serialize + ?Sized>(
        aggregate_type: &'a str,
        event_type: &'a str,
        aggregate_id: Option<impl std::fmt::Display>,
        payload: &T,
    ) -> Result<Self, Error> {
        Self::with_id_string(
            aggregate_type,
            event_type,
            aggregate_id.map(|id| id.to_string()),
            payload,
        )
    }

    /// [`Event::new`] with the id already a string.
    pub fn with_id_string<T: Serialize + ?Sized>(
        aggregate_type: &'a str,
        event_type: &'a str,
        aggregate_id: Option<String>,
        payload: &T,
    ) -> Result<Self, Error> {
        let payload = serde_json::to_string(payload).map_err(|source| Error::Serialize {
            event_type: event_type.to_owned(),
            source,
        })?;
        Ok(Event {
            aggregate_type,
            event_type,
            aggregate_id,
            payload,
            headers: Vec::new(),
            version: None,
            schedule: None,
        })
    }

    /// Records the header `name: value` with the event; the sinks pass it on with the message
    /// (a broker header, an MQTT user property, a field). A later header of the same name
    /// replaces an earlier one, and those of the event replace those of the outbox's
    /// [header source](crate::Outbox::header_source).
    ///
    /// ```
    /// # use outbox::Event;
    /// let event = Event::new("account", "AccountOpened", Some(42), &serde_json::json!({}))?
    ///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// # Ok::<(), outbox::Error>(())
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// With the event type's schema version, recorded as the header
    /// [`outbox-event-version`](crate::sinks::EVENT_VERSION).
    pub fn version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    /// Published no earlier than `delay` after it is recorded (by the database's clock), and
    /// only if the recording transaction commits: "send the reminder in 24 hours". Until then
    /// the event is *delayed*: counted apart by [`Outbox::status`](crate::Outbox::status),
    /// cancellable with [`Outbox::cancel`](crate::Outbox::cancel), and it takes no part in its
    /// aggregate's order — the aggregate's later events are not held back by it; once due, it
    /// goes before the aggregate's events still pending. The relay publishes it within a poll
    /// interval of its time. Not available with log tailing (`Outbox::log_tailing`,
    /// `wal_messages`), whose events leave in log order.
    ///
    /// ```
    /// # use outbox::Event;
    /// use std::time::Duration;
    ///
    /// let reminder = Event::new("order", "PaymentReminder", Some(42), &serde_json::json!({}))?
    ///     .deliver_after(Duration::from_secs(24 * 60 * 60));
    /// # Ok::<(), outbox::Error>(())
    /// ```
    pub fn deliver_after(mut self, delay: Duration) -> Self {
        self.schedule = Some(Schedule::After(delay));
        self
    }

    /// Published no earlier than `when` (see [`deliver_after`](Event::deliver_after)); an
    /// instant already past means at once.
    pub fn deliver_at(mut self, when: SystemTime) -> Self {
        self.schedule = Some(Schedule::At(when));
        self
    }
}

impl Recordable for Event<'_> {
    fn aggregate_type(&self) -> &str {
        self.aggregate_type
    }
    fn event_type(&self) -> &str {
        self.event_type
    }
    fn aggregate_id(&self) -> Option<Cow<'_, str>> {
        self.aggregate_id.as_deref().map(Cow::Borrowed)
    }
    fn to_json(&self) -> Result<Cow<'_, str>, serde_json::Error> {
        Ok(Cow::Borrowed(&self.payload))
    }
    fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
    fn version(&self) -> Option<u32> {
        self.version
    }
    fn schedule(&self) -> Option<Schedule> {
        self.schedule
    }
}
