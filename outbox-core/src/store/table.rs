//! What the databases' outbox tables share: the row a [`Message`] is decoded from, the claims'
//! conditions, the low-water mark, the dead-letter filter's conditions, batched deletes. Each
//! database's statements stay whole in its own module; what repeats around them is here.

use std::future::Future;
use std::time::Duration;

use crate::message::{DeadLetter, DeadLetterFilter, Message};
#[cfg(feature = "mysql")]
use crate::relay::Ordering;

/// The columns of a [`Message`] as every database's queries return them: `id` as text,
/// `payload` and `headers` as JSON text.
#[derive(Debug)]
pub(crate) struct MessageRow {
    seq: i64,
    id: String,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    payload: String,
    headers: Option<String>,
    attempts: i32,
}

impl MessageRow {
    /// Its place in the table.
    #[cfg(feature = "postgres")]
    pub(crate) fn seq(&self) -> i64 {
        self.seq
    }

    /// The bytes of its payload and headers: what a claim's byte budget counts.
    pub(crate) fn size(&self) -> usize {
        self.payload.len() + self.headers.as_ref().map_or(0, String::len)
    }
}

impl TryFrom<MessageRow> for Message {
    type Error = sqlx::Error;

    fn try_from(row: MessageRow) -> Result<Message, sqlx::Error> {
        let id = row.id.parse().map_err(|error| sqlx::Error::ColumnDecode {
            index: "id".to_owned(),
            source: Box::new(error),
        })?;
        Ok(Message {
            id,
            seq: row.seq,
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            event_type: row.event_type,
            payload: row.payload,
            headers: row.headers,
            attempts: row.attempts,
        })
    }
}

impl<'r, R> sqlx::FromRow<'r, R> for MessageRow
where
    R: sqlx::Row,
    for<'i> &'i str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(MessageRow {
            seq: row.try_get("seq")?,
            id: row.try_get("id")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            event_type: row.try_get("event_type")?,
            payload: row.try_get("payload")?,
            headers: row.try_get("headers")?,
            attempts: row.try_get("attempts")?,
        })
    }
}

/// The columns of an audit's [`Committed`](crate::audit::Committed) as every database's query
/// returns them: `seq`, `id` as text, `aggregate_type`, `aggregate_id`, and `state` (0 pending,
/// 1 published, 2 dead; [`STATE`] computes it).
pub(crate) fn committed<R>(rows: &[R]) -> Result<Vec<crate::audit::Committed>, sqlx::Error>
where
    R: sqlx::Row,
    for<'i> &'i str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    use crate::audit::{Committed, CommittedState};
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            let id = id.parse().map_err(|error| sqlx::Error::ColumnDecode {
                index: "id".to_owned(),
                source: Box::new(error),
            })?;
            let state = match row.try_get::<i64, _>("state")? {
                0 => CommittedState::Pending,
                1 => CommittedState::Published,
                _ => CommittedState::Dead,
            };
            let committed = Committed::new(
                id,
                row.try_get("seq")?,
                row.try_get::<String, _>("aggregate_type")?,
                row.try_get::<String, _>("aggregate_id")?,
                state,
            );
            // Only PostgreSQL's log-tailed tables have the column (the query names it then).
            let position = row
                .try_get::<Option<i64>, _>("commit_position")
                .ok()
                .flatten()
                .and_then(|position| u64::try_from(position).ok());
            Ok(match position {
                Some(position) => committed.with_commit_position(position),
                None => committed,
            })
        })
        .collect()
}

/// An event's state as a number, for [`committed`]: the same SQL on every database.
pub(crate) const STATE: &str =
    "CASE WHEN o.dead_at IS NOT NULL THEN 2 WHEN o.published_at IS NOT NULL THEN 1 ELSE 0 END";

/// The bytes of events a claim may still take: its events' payloads and headers stay under
/// it, except that a claim always takes its first event, however large.
#[derive(Debug)]
#[doc(hidden)]
pub struct ByteBudget {
    left: usize,
    taken: usize,
    full: bool,
}

impl ByteBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        ByteBudget {
            left: bytes,
            taken: 0,
            full: false,
        }
    }

    /// The bytes still free.
    #[cfg(feature = "postgres")]
    pub(crate) fn left(&self) -> usize {
        self.left
    }

    /// An event did not fit: the claim takes nothing more.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    pub(crate) fn is_full(&self) -> bool {
        self.full
    }

    /// Takes `row` if it fits (or is the claim's first), else marks the budget full.
    pub(crate) fn admit(&mut self, row: &MessageRow) -> bool {
        let size = row.size();
        if self.full || (self.taken > 0 && size > self.left) {
            self.full = true;
            return false;
        }
        self.left = self.left.saturating_sub(size);
        self.taken += 1;
        true
    }
}

/// The messages of `rows`, read one at a time until one passes `budget`: the rest of the result
/// is not kept in memory (the driver discards it). Rows the query locked but the budget left
/// out stay pending, and are claimed again once the claim's transaction ends.
pub(crate) async fn messages_within<S>(
    rows: S,
    budget: &mut ByteBudget,
) -> Result<Vec<Message>, sqlx::Error>
where
    S: futures_util::Stream<Item = Result<MessageRow, sqlx::Error>>,
{
    use futures_util::StreamExt;
    let mut rows = std::pin::pin!(rows);
    let mut messages = Vec::new();
    while let Some(row) = rows.next().await {
        let row = row?;
        if !budget.admit(&row) {
            break;
        }
        messages.push(Message::try_from(row)?);
    }
    Ok(messages)
}

/// A [`DeadLetter`]'s columns: the message's, its last error (`last_error`), and how many
/// seconds ago it died as the database computed it (`dead_secs`).
#[derive(Debug)]
pub(crate) struct DeadLetterRow {
    message: MessageRow,
    last_error: Option<String>,
    dead_secs: Option<f64>,
}

impl<'r, R> sqlx::FromRow<'r, R> for DeadLetterRow
where
    R: sqlx::Row,
    for<'i> &'i str: sqlx::ColumnIndex<R>,
    MessageRow: sqlx::FromRow<'r, R>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(DeadLetterRow {
            message: MessageRow::from_row(row)?,
            last_error: row.try_get("last_error")?,
            dead_secs: row.try_get("dead_secs")?,
        })
    }
}

/// Decodes the rows of a dead-letter query (the columns of a [`DeadLetterRow`]).
pub(crate) fn dead_letters<R>(rows: &[R]) -> Result<Vec<DeadLetter>, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> DeadLetterRow: sqlx::FromRow<'r, R>,
{
    rows.iter()
        .map(|row| {
            let row = <DeadLetterRow as sqlx::FromRow<'_, R>>::from_row(row)?;
            Ok(DeadLetter {
                message: row.message.try_into()?,
                last_error: row.last_error.unwrap_or_default(),
                // A clock step may make the age negative: zero then.
                dead_for: Duration::try_from_secs_f64(row.dead_secs.unwrap_or(0.0).max(0.0))
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Where a claim's scan of the table starts (`seq`): the oldest pending event an earlier claim
/// found, so that every pending event is at or above it except those committed late or come
/// due since housekeeping last lowered it. Without it, every claim would walk the index entries
/// of all the deleted events the database has not yet cleaned up. Shared by the claims of one
/// source.
///
/// It only ever moves to an event that was pending when a claim looked (never past a batch
/// just settled): with several relays, the events between two of this relay's claims may be
/// another relay's, and the later events of their aggregates come due when that relay settles.
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

    /// A claim found the oldest pending event from the mark at `seq`: the mark moves up to it
    /// (never down: another claim may already be further).
    pub(crate) fn raise(&self, seq: i64) {
        self.0.fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
    }
}

/// SQL shared by the dialects' queries: the condition that the row `alias` stands for is
/// pending (neither published nor dead).
pub(crate) fn pending(alias: &str) -> String {
    format!("{alias}.dead_at IS NULL AND {alias}.published_at IS NULL")
}

/// SQL shared by the dialects' queries: the row `alias` stands for was recorded to be delivered
/// later ([`Event::deliver_after`](crate::Event::deliver_after)) and its time has not come
/// (`now` is the dialect's clock). Such an event is not pending yet: it takes no part in its
/// aggregate's order until it is due. A retry's delay (`attempts > 0`) is not a deferral: an
/// event waiting for its retry holds its aggregate's later events back.
pub(crate) fn deferred(alias: &str, now: &str) -> String {
    format!("({alias}.attempts = 0 AND {alias}.available_at > {now})")
}

/// The statement of [`Outbox::cancel`](crate::Outbox::cancel): deletes the delayed event whose
/// id is the parameter `id` (`$1` or `?`), unless it was published or dead.
pub(crate) fn cancel_statement(quoted_table: &str, id: &str) -> String {
    format!(
        "DELETE FROM {quoted_table} WHERE id = {id} AND scheduled \
         AND published_at IS NULL AND dead_at IS NULL"
    )
}

/// The rows a table source claims from: the pending ones, or (for the log source's table of
/// parked events, see `store::postgres::log`) the pending ones it parked there.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn claimable(alias: &str, parked_only: bool) -> String {
    let pending = pending(alias);
    if parked_only {
        format!("{pending} AND {alias}.parked")
    } else {
        pending
    }
}

/// SQL shared by the dialects' claims: under [`Ordering::PerAggregate`], the condition that `o`
/// is the head of its aggregate, with no earlier pending event. Another relay holding a head
/// keeps its aggregate's later events out of a claim, since the head row is still there.
#[cfg(feature = "mysql")]
pub(crate) fn head_condition(
    table: &str,
    ordering: Ordering,
    parked_only: bool,
    now: &str,
) -> String {
    match ordering {
        Ordering::PerAggregate => format!("AND {}", head_probe(table, parked_only, now)),
        Ordering::Unordered => String::new(),
    }
}

/// The condition that the event `o` of `table` has no earlier pending event in its aggregate
/// (an event [deferred] until later does not count).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn head_probe(table: &str, parked_only: bool, now: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM {table} e WHERE e.aggregate_type = o.aggregate_type \
         AND e.aggregate_id = o.aggregate_id AND e.seq < o.seq AND {})",
        in_order("e", parked_only, now)
    )
}

/// The claimable rows that take part in their aggregate's order now: not [deferred].
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn in_order(alias: &str, parked_only: bool, now: &str) -> String {
    format!(
        "{} AND NOT {}",
        claimable(alias, parked_only),
        deferred(alias, now)
    )
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

/// A value bound by a dead-letter filter's condition, in the order of the placeholders.
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
pub(crate) fn dead_letter_conditions<'a>(
    filter: &'a DeadLetterFilter,
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

#[cfg(all(test, any(feature = "postgres", feature = "mysql")))]
mod tests {
    use super::*;

    #[test]
    fn the_low_water_mark_rises_with_claims_and_falls_only_by_housekeeping() {
        let mark = LowWater::default();
        mark.raise(40);
        mark.raise(25); // a slower claim that looked earlier: no effect
        assert_eq!(mark.get(), 40);
        let shared = mark.clone();
        shared.raise(41);
        assert_eq!(mark.get(), 41);
        mark.reset(7); // a late commit found by housekeeping
        assert_eq!(shared.get(), 7);
    }
}
