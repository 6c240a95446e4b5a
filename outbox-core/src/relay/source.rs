//! The seam between the relay and where events come from: the outbox table of each database,
//! claimed in batches, or a source of your own given to [`Relay::from_source`](super::Relay::from_source)
//! (a log, a change feed, another queue). A source implements these two traits and leaves the
//! sinks, the retries, the dead letters and the metrics to the relay.
//!
//! # The contract, for implementers
//!
//! * [`Source::claim`] returns a batch in which, for each aggregate, the first message is its
//!   oldest undelivered event, followed (optionally) by its next events in order. An event
//!   whose retry is not due yet ([`Settlement::retry`]'s delay) is not claimable, and neither
//!   are the later events of its aggregate, unless the relay runs [unordered](super::Ordering).
//!   While a claim is held, no other claim may include any event of its aggregates.
//! * Each [`Message`] carries a `seq` that is unique in the source: the settlement names
//!   messages by it. `attempts` counts the failed deliveries so far; the relay dead-letters a
//!   message whose next attempt reaches `max_attempts`.
//! * [`Claim::settle`] records the outcome: published (remove or mark), retry (count the
//!   attempt, keep the error, make it due after the delay) and dead (keep it apart with its
//!   error). Messages in none of the lists were not tried — they sat behind a failure — and are
//!   released untouched. A claim dropped without settling (crash, abort) releases everything:
//!   the events are claimed again, at least once.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use super::{Message, Ordering};
use crate::{Error, TableName};

/// Where the relay takes events from.
pub trait Source: Send + Sync + 'static {
    /// A claimed batch.
    type Claim: Claim;

    /// Claims up to `max` events that may be delivered now: for each aggregate, its oldest
    /// pending event and, in order, some that follow it. `None` when there is nothing to do.
    /// While claimed, no other relay can claim these events or any later event of their
    /// aggregates.
    fn claim(&self, max: usize) -> impl Future<Output = Result<Option<Self::Claim>, Error>> + Send;

    /// Returns when new events may have arrived, or after `timeout`.
    fn wait(&self, timeout: Duration) -> impl Future<Output = ()> + Send;

    /// Housekeeping, run every 2 seconds: purges published events older than `retention` (in
    /// bounded batches), catches up with events that an optimised claim may have passed over
    /// (late commits, retries come due), and returns the age of the oldest pending event in
    /// seconds.
    fn maintain(
        &self,
        retention: Option<Duration>,
    ) -> impl Future<Output = Result<f64, Error>> + Send;

    /// Called once when the relay stops gracefully: hands over what the source holds (a lease)
    /// so that another relay can take over at once.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A claimed batch: the messages, held until settled. Dropped unsettled (relay crash, abort),
/// the claim lapses and the events are claimed again: at-least-once.
pub trait Claim: Send {
    /// Takes the claimed messages, in `seq` order (the claim keeps its locks).
    fn take_messages(&mut self) -> Vec<Message>;

    /// Records what happened to the messages and releases the claim. Messages in none of the
    /// settlement's lists are released untouched (held back behind a failure).
    fn settle(self, settlement: Settlement) -> impl Future<Output = Result<(), Error>> + Send;

    /// Called before the relay hands the claimed messages to the sink: notes `messages` as in
    /// this relay's hands (somewhere a crash does not roll back), and returns, by
    /// `seq`, how many times relays stopped — crashed, were killed, lost the database — with
    /// one of them in hand before settling it, for those where that happened. The relay then
    /// handles such suspects one at a time, and counts those stops as failed attempts: an event
    /// that kills every relay that handles it ends a dead letter at
    /// [`max_attempts`](super::RelayBuilder::max_attempts). The default keeps no note and
    /// returns nothing: an event that kills the relay is then claimed again after every
    /// restart.
    fn in_hand(
        &mut self,
        messages: &[Message],
    ) -> impl Future<Output = Result<HashMap<i64, u32>, Error>> + Send {
        let _ = messages;
        async { Ok(HashMap::new()) }
    }

    /// The table the batch comes from, when a source serves several
    /// ([`Outboxes`](super::many::Outboxes)): the relay's metrics and spans name it.
    fn table(&self) -> Option<&TableName> {
        None
    }
}

/// What the relay did with a claimed batch.
#[derive(Debug, Default)]
pub struct Settlement {
    /// Delivered: delete, or mark published in retention mode.
    pub published: Vec<i64>,
    /// Failed, to try again after the delay: `(seq, error, delay)`.
    pub retry: Vec<(i64, String, Duration)>,
    /// Failed for good: `(seq, error)`.
    pub dead: Vec<(i64, String)>,
}

/// What a table [`Source`] needs to know of the relay's settings.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub table: TableName,
    pub ordering: Ordering,
    /// Retention mode: mark published events instead of deleting them.
    pub retain: bool,
    /// The table notifies on commit: wait for notifications, not only the poll interval.
    pub listen: bool,
    /// SQLite: how long the relay lease lasts without renewal.
    pub lease_ttl: Duration,
    /// PostgreSQL log tailing: claim only the events the log source parked in the table.
    pub parked_only: bool,
    /// The byte budget of a claim: its events' payloads and headers (always one event).
    pub max_batch_bytes: usize,
}

/// A database's statements for the relay: its outbox table as a [`Source`], and the discovery of
/// outbox tables. Implemented by the library in each `store/<database>/relay.rs`; part of
/// [`Dialect`](crate::Dialect).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database the outbox supports",
    note = "enable the `postgres`, `mysql` or `sqlite` feature of outbox; in generic code bound the database with `DB: outbox::Dialect`"
)]
pub trait RelaySql: sqlx::Database + crate::sealed::Sealed {
    /// The outbox table as a relay source.
    type Source: Source;

    #[doc(hidden)]
    fn __source(pool: sqlx::Pool<Self>, config: &SourceConfig) -> Self::Source;

    /// The outbox tables (those with the outbox's columns) whose schema is like `schema`
    /// (`None`: the connection's current one) and whose name is like `name`: SQL `LIKE`
    /// patterns with `\` as the escape. Sorted.
    #[doc(hidden)]
    fn __discover<'a>(
        pool: &'a sqlx::Pool<Self>,
        schema: Option<&'a str>,
        name: &'a str,
    ) -> impl Future<Output = Result<Vec<(Option<String>, String)>, sqlx::Error>> + Send + 'a;
}
