//! Helpers for the code the macros generate. Not public API: no stability promises.
//!
//! The expansion calls these with the user's spans, so that each mistake produces one error at
//! the token the user wrote: rustc reports a failed bound once per span and predicate.

use std::fmt::Display;
use std::future::Future;

use crate::{Error, Outbox, OutboxConnection, OutboxEvent, Recordable};

pub use inventory;
pub use serde::Serialize;

/// Pins the output type of the wrapped function body, so that `?` inside it knows which error
/// type to convert into.
#[inline(always)]
pub fn body<R, F: Future<Output = R>>(future: F) -> F {
    future
}

/// Asserts at compile time that `C` is a transaction; errors carry the trait's explanation.
/// Runs an `#[inbox_handler]`'s body: in the span of the message's processing (feature
/// `opentelemetry`), as is otherwise.
pub async fn handler_scope<F, T, E>(
    message: &(dyn crate::inbox::InboxMessage + Sync),
    id: &str,
    consumer: &str,
    body: F,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    #[cfg(feature = "opentelemetry")]
    return crate::inbox::spans::processing(message, id, consumer, body).await;
    #[cfg(not(feature = "opentelemetry"))]
    {
        let _ = (message, id, consumer);
        body.await
    }
}

#[inline(always)]
pub fn assert_transaction<C: OutboxConnection + ?Sized>() {}

/// Converts the outbox error into the function's error type.
#[inline(always)]
pub fn into_error<E: From<Error>>(error: Error) -> E {
    E::from(error)
}

/// The entity as an event, checked to derive `OutboxEvent` (`#[outbox_event]` without
/// arguments).
#[inline(always)]
pub fn derived_event<T: OutboxEvent>(entity: &T) -> &dyn Recordable {
    entity
}

/// Records through the transaction parameter. The event is already erased, so the only bound
/// checked here is the connection's, at the parameter's span.
pub fn record<'a, C: OutboxConnection + ?Sized>(
    outbox: &'a Outbox,
    conn: &'a mut C,
    event: &dyn Recordable,
) -> impl Future<Output = Result<uuid::Uuid, Error>> + Send + 'a {
    outbox.record(conn, event)
}

/// The derive's metadata of the entity, for arguments the attribute leaves out.
#[inline(always)]
pub fn aggregate_type_of<T: OutboxEvent + ?Sized>(_: &T) -> &'static str {
    T::AGGREGATE_TYPE
}

/// See [`aggregate_type_of`].
/// `event` with the version of the derive that gave its event type.
#[inline(always)]
pub fn with_version_of<'a, T: OutboxEvent + ?Sized>(
    event: crate::Event<'a>,
    _: &T,
) -> crate::Event<'a> {
    match T::VERSION {
        Some(version) => event.version(version),
        None => event,
    }
}

#[inline(always)]
pub fn event_type_of<T: OutboxEvent + ?Sized>(_: &T) -> &'static str {
    T::EVENT_TYPE
}

/// See [`aggregate_type_of`].
#[inline(always)]
pub fn aggregate_id_of<T: OutboxEvent + ?Sized>(entity: &T) -> Option<String> {
    entity.aggregate_id()
}

/// A type that can be an aggregate id: anything `Display`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an aggregate id: it does not implement `Display`",
    label = "the `#[outbox(aggregate_id)]` field must be `Display`, or an `Option` of a `Display` type",
    note = "aggregate ids are stored as text: use a number, a string or a UUID, or implement `std::fmt::Display` for `{Self}`",
    note = "an optional id must be written as `Option<...>` in the field's type"
)]
pub trait AggregateIdValue {
    /// The id as text.
    fn __outbox_id_string(&self) -> String;
}

impl<T: Display + ?Sized> AggregateIdValue for T {
    fn __outbox_id_string(&self) -> String {
        self.to_string()
    }
}

/// The derive's aggregate id of a field (of the `T` in a field written `Option<T>`).
#[inline(always)]
pub fn id_to_string<T: AggregateIdValue + ?Sized>(id: &T) -> String {
    id.__outbox_id_string()
}

/// Calls the `aggregate_id = |entity| ...` closure with its parameter type known.
#[inline(always)]
pub fn apply<'a, T: ?Sized, R, F: FnOnce(&'a T) -> R>(entity: &'a T, f: F) -> R {
    f(entity)
}

/// Turns the value of an `aggregate_id = |entity| ...` closure into `Option<String>`:
/// `Option<impl Display>` maps, any other `Display` value is `Some`. The closure's result type is
/// only known to the type checker, so this is chosen by method resolution, called as
/// `(&IdProbe(&value)).__outbox_aggregate_id()` with both traits in scope: the `Option` impl
/// needs no auto-ref and wins when it applies.
#[derive(Debug)]
pub struct IdProbe<'a, T: ?Sized>(pub &'a T);

/// `Option<impl Display>` ids; `None` means "not persisted yet".
pub trait OptionalId {
    /// The id, or `None`.
    fn __outbox_aggregate_id(&self) -> Option<String>;
}

impl<T: Display> OptionalId for IdProbe<'_, Option<T>> {
    fn __outbox_aggregate_id(&self) -> Option<String> {
        self.0.as_ref().map(ToString::to_string)
    }
}

/// Plain `Display` ids.
pub trait PresentId {
    /// The id.
    fn __outbox_aggregate_id(&self) -> Option<String>;
}

impl<T: Display + ?Sized> PresentId for &IdProbe<'_, T> {
    fn __outbox_aggregate_id(&self) -> Option<String> {
        Some(self.0.to_string())
    }
}

/// The id of an `#[inbox_handler]`'s message, checked to be an `InboxMessage` at its span.
#[inline(always)]
pub fn message_id<M: crate::inbox::InboxMessage + Sync>(
    message: &M,
) -> Result<(String, &(dyn crate::inbox::InboxMessage + Sync)), Error> {
    Ok((message.message_id()?, message))
}

/// Records an `#[inbox_handler]`'s message id through its transaction parameter.
pub fn inbox_record<'a, C: OutboxConnection + ?Sized>(
    inbox: &'a crate::inbox::Inbox,
    conn: &'a mut C,
    consumer: &'a str,
    message_id: &'a str,
) -> impl Future<Output = Result<crate::inbox::Recorded, Error>> + Send + 'a
where
    C::Dialect: crate::inbox::InboxSql,
{
    inbox.record(conn, consumer, message_id)
}

/// Finds, at the derive's expansion, whether the entity has a JSON Schema: [`HasSchema`] applies
/// when it implements `schemars::JsonSchema` (feature `schemars`), [`NoSchema`] otherwise (by
/// auto-ref, a weaker match).
#[derive(Debug)]
pub struct SchemaProbe<T>(std::marker::PhantomData<T>);

impl<T> SchemaProbe<T> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        SchemaProbe(std::marker::PhantomData)
    }
}

pub use crate::registry::PayloadSchema;

/// The entity has no schema.
pub trait NoSchema {
    fn __outbox_schema(&self) -> Option<PayloadSchema> {
        None
    }
}

impl<T> NoSchema for &SchemaProbe<T> {}

/// The entity derives `schemars::JsonSchema`.
pub trait HasSchema {
    fn __outbox_schema(&self) -> Option<PayloadSchema>;
}

#[cfg(feature = "schemars")]
impl<T: schemars::JsonSchema> HasSchema for SchemaProbe<T> {
    fn __outbox_schema(&self) -> Option<PayloadSchema> {
        Some(PayloadSchema::of::<T>())
    }
}

/// What `#[outbox_event(delay = ...)]` accepts: a delay, an instant, or an `Option` of either
/// (`None`: at once).
#[diagnostic::on_unimplemented(
    message = "`delay` takes a `std::time::Duration` or a `SystemTime` (or an `Option` of either), not `{Self}`",
    label = "not a delay",
    note = "write `delay = Duration::from_secs(3600)`, or `delay = |entity| entity.remind_in` for one per entity"
)]
pub trait IntoSchedule {
    /// The schedule, if any.
    fn into_schedule(self) -> Option<crate::Schedule>;
}

impl IntoSchedule for std::time::Duration {
    fn into_schedule(self) -> Option<crate::Schedule> {
        Some(crate::Schedule::After(self))
    }
}

impl IntoSchedule for std::time::SystemTime {
    fn into_schedule(self) -> Option<crate::Schedule> {
        Some(crate::Schedule::At(self))
    }
}

impl IntoSchedule for crate::Schedule {
    fn into_schedule(self) -> Option<crate::Schedule> {
        Some(self)
    }
}

impl<T: IntoSchedule> IntoSchedule for Option<T> {
    fn into_schedule(self) -> Option<crate::Schedule> {
        self.and_then(IntoSchedule::into_schedule)
    }
}

/// The schedule of `#[outbox_event(delay = ...)]`.
#[inline(always)]
pub fn schedule<T: IntoSchedule>(value: T) -> Option<crate::Schedule> {
    value.into_schedule()
}

/// An event with the schedule the attribute's `delay` gives it.
pub struct Delayed<'a> {
    event: &'a dyn Recordable,
    schedule: Option<crate::Schedule>,
}

impl std::fmt::Debug for Delayed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayed")
            .field("event_type", &self.event.event_type())
            .field("schedule", &self.schedule)
            .finish()
    }
}

impl<'a> Delayed<'a> {
    /// `event`, published per `schedule`.
    pub fn new(event: &'a dyn Recordable, schedule: Option<crate::Schedule>) -> Self {
        Delayed { event, schedule }
    }
}

impl Recordable for Delayed<'_> {
    fn aggregate_type(&self) -> &str {
        self.event.aggregate_type()
    }
    fn event_type(&self) -> &str {
        self.event.event_type()
    }
    fn aggregate_id(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.event.aggregate_id()
    }
    fn to_json(&self) -> Result<std::borrow::Cow<'_, str>, serde_json::Error> {
        self.event.to_json()
    }
    fn headers(&self) -> &[(String, String)] {
        self.event.headers()
    }
    fn version(&self) -> Option<u32> {
        self.event.version()
    }
    fn schedule(&self) -> Option<crate::Schedule> {
        self.schedule
    }
}
