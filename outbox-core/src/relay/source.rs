//! The seam between the relay and where events come from. Today: the outbox table, claimed in
//! batches. A new source (logical decoding, a change feed) implements these two traits and
//! leaves the sinks and the retry logic alone.

use std::future::Future;
use std::time::Duration;

use super::Message;
use crate::Error;

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
}

/// A claimed batch: the messages, held until settled. Dropped unsettled (relay crash, abort),
/// the claim lapses and the events are claimed again: at-least-once.
pub trait Claim: Send {
    /// Takes the claimed messages, in `seq` order (the claim keeps its locks).
    fn take_messages(&mut self) -> Vec<Message>;

    /// Records what happened to the messages and releases the claim. Messages in none of the
    /// settlement's lists are released untouched (held back behind a failure).
    fn settle(self, settlement: Settlement) -> impl Future<Output = Result<(), Error>> + Send;
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
