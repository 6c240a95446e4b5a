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

/// Where a claim's scan of the table starts (`seq`): every pending event is at or above it,
/// except those committed late or come due since housekeeping last lowered it. Without it, every
/// claim would walk the index entries of all the deleted events the database has not yet
/// cleaned up. Shared by the claims of one source.
#[cfg(any(feature = "postgres", feature = "mysql"))]
#[derive(Debug, Clone, Default)]
pub(crate) struct LowWater(std::sync::Arc<std::sync::atomic::AtomicI64>);

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl LowWater {
    /// The `seq` to scan from.
    pub(crate) fn get(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Housekeeping found the oldest pending event at `seq`: events committed late with a lower
    /// `seq`, and retries come due behind the mark, are claimable again.
    pub(crate) fn reset(&self, seq: i64) {
        self.0.store(seq, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where the scan may start once `settlement` of the batch `claimed` (in `seq` order) has
    /// committed: at its first event still pending (failed or held back), or past its end.
    pub(crate) fn after(claimed: &[i64], settlement: &Settlement) -> Option<i64> {
        let settled: std::collections::HashSet<i64> = settlement
            .published
            .iter()
            .chain(settlement.dead.iter().map(|(seq, _)| seq))
            .copied()
            .collect();
        claimed
            .iter()
            .find(|seq| !settled.contains(seq))
            .copied()
            .or_else(|| claimed.last().map(|last| last + 1))
    }

    /// Moves the mark up to `next` (never down: another claim may already be further).
    pub(crate) fn advance(&self, next: Option<i64>) {
        if let Some(next) = next {
            self.0.fetch_max(next, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// SQL shared by the dialects' claims: the condition that `o` (the table aliased) is pending.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) const PENDING: &str = "o.dead_at IS NULL AND o.published_at IS NULL";

/// SQL shared by the dialects' claims: under [`Ordering::PerAggregate`], the condition that `o`
/// is the head of its aggregate, with no earlier pending event. Another relay holding a head
/// keeps its aggregate's later events out of a claim, since the head row is still there.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn head_condition(table: &str, ordering: super::Ordering) -> String {
    match ordering {
        super::Ordering::PerAggregate => format!(
            "AND NOT EXISTS (SELECT 1 FROM {table} e WHERE e.aggregate_type = o.aggregate_type \
             AND e.aggregate_id = o.aggregate_id AND e.seq < o.seq \
             AND e.dead_at IS NULL AND e.published_at IS NULL)"
        ),
        super::Ordering::Unordered => String::new(),
    }
}

/// A comma-separated list of `seq`s, for `IN (...)` in dialects without array parameters: safe
/// to put in SQL because they are integers read from the table itself.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn seq_list(seqs: impl IntoIterator<Item = i64>) -> String {
    seqs.into_iter()
        .map(|seq| seq.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `delete` — a statement deleting at most `batch` rows — until it deletes fewer, so that
/// a purge never holds locks on more than one batch at a time. Returns how many rows went.
pub(crate) async fn delete_in_batches<F, Fut>(batch: i64, mut delete: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, sqlx::Error>>,
{
    let full = u64::try_from(batch).unwrap_or(u64::MAX);
    let mut total = 0;
    loop {
        let done = delete().await?;
        total += done;
        if done < full {
            return Ok(total);
        }
    }
}

/// A dead letter's age from the seconds the database computed (a clock step may make it
/// negative: zero then).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) fn dead_for(seconds: Option<f64>) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(seconds.unwrap_or(0.0).max(0.0)).unwrap_or_default()
}

/// A value bound by a dead-letter filter's condition, in the order of the placeholders.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) enum FilterValue<'a> {
    Text(&'a str),
    Id(uuid::Uuid),
    /// The least time since the event died.
    Age(Duration),
}

/// SQL shared by the dialects' dead-letter queries: the `AND …` conditions that `filter` puts
/// on `o` (the table aliased), with `placeholder(n)` for the n-th value (from 1) and `older(p)`
/// the dialect's condition that `o.dead_at` is at least the age bound at `p`; and the values
/// to bind, in order.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) fn dead_letter_conditions<'a>(
    filter: &'a super::DeadLetterFilter,
    placeholder: impl Fn(usize) -> String,
    older: impl Fn(&str) -> String,
) -> (String, Vec<FilterValue<'a>>) {
    let mut sql = String::new();
    let mut values = Vec::new();
    let mut condition = |column: &str, value: FilterValue<'a>| {
        values.push(value);
        sql.push_str(&format!(" AND o.{column} = {}", placeholder(values.len())));
    };
    if let Some(id) = filter.id {
        condition("id", FilterValue::Id(id));
    }
    for (column, value) in [
        ("event_type", &filter.event_type),
        ("aggregate_type", &filter.aggregate_type),
        ("aggregate_id", &filter.aggregate_id),
    ] {
        if let Some(value) = value {
            condition(column, FilterValue::Text(value));
        }
    }
    if let Some(age) = filter.dead_for_at_least {
        values.push(FilterValue::Age(age));
        sql.push_str(&format!(" AND {}", older(&placeholder(values.len()))));
    }
    (sql, values)
}

/// A dead letter from its row (columns `last_error` and `dead_secs`) and its decoded message:
/// the dialects' queries differ, their rows decode alike.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) fn dead_letter<R>(row: &R, message: Message) -> Result<super::DeadLetter, sqlx::Error>
where
    R: sqlx::Row,
    for<'i> &'i str: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(super::DeadLetter {
        message,
        last_error: row
            .try_get::<Option<String>, _>("last_error")?
            .unwrap_or_default(),
        dead_for: dead_for(row.try_get("dead_secs")?),
    })
}
