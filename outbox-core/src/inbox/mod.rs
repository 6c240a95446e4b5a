//! The consumer side: exactly-once processing of at-least-once deliveries.
//!
//! An outbox delivers every event at least once; sooner or later a consumer sees one twice (a
//! relay crash after publishing, a broker redelivery, a consumer crash before its ack). The
//! [`Inbox`] makes processing exactly-once: the message id is recorded in an inbox table **in the
//! same transaction** as the consumer's own writes, and a message whose id is already there is
//! skipped.
//!
//! ```no_run
//! # type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # async fn demo(pool: sqlx::PgPool, message_id: &str) -> Result<(), BoxError> {
//! use outbox::inbox::{Inbox, Processed};
//!
//! const INBOX: Inbox = Inbox::DEFAULT;
//! INBOX.migrate(&pool).await?; // once, at start-up
//!
//! let outcome = INBOX
//!     .process(&pool, "read-model", message_id, |tx| {
//!         Box::pin(async move {
//!             sqlx::query("UPDATE balances SET cents = cents + 100 WHERE account = 42")
//!                 .execute(&mut **tx)
//!                 .await?;
//!             Ok::<_, BoxError>(())
//!         })
//!     })
//!     .await?;
//! if outcome.is_duplicate() {
//!     // seen before: nothing ran, nothing changed; acknowledge it again
//! }
//! # Ok(()) }
//! ```
//!
//! How it stays exactly-once under concurrency: the inbox row is inserted **first**, before the
//! handler runs. A second delivery of the same message, processed at the same time, waits on the
//! row's key until the first transaction ends: if it committed, the second is a duplicate; if it
//! rolled back (the handler failed), the second one processes the message.
//!
//! * [`Inbox::process`] runs a handler and records the id in one transaction, from a pool.
//! * [`Inbox::record`] is the step alone, through a transaction you manage.
//! * `#[inbox_handler]` (feature `macros`) adds that step to an async function.
//! * [`nats`], [`rabbitmq`], [`redis`], [`mqtt`] and [`kafka`] take a message from the broker's
//!   consumer, process it through the inbox, and only then acknowledge it.
//! * [`Offsets`] is the other way for a partitioned log (Kafka): no id per message, the
//!   partition's next offset committed with the side effects, and the consumer resuming from it
//!   ([`kafka::OffsetConsumer`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::{Error, OutboxConnection, TableName};

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
mod offsets;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "opentelemetry")]
pub(crate) mod spans;

pub use crate::consumed::InboxMessage;
pub use offsets::{Offsets, Position};

/// Longest consumer name or message id: the width of the MySQL columns.
const MAX_KEY_LEN: usize = 255;

/// An inbox table and its retention. A `const`, like [`Outbox`](crate::Outbox):
///
/// ```
/// use std::time::Duration;
/// use outbox::{TableName, inbox::Inbox};
///
/// pub const INBOX: Inbox = Inbox::for_table(TableName::from_static("billing_inbox"))
///     .retention(Duration::from_secs(30 * 24 * 3600));
/// assert_eq!(INBOX.table().as_str(), "billing_inbox");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbox {
    table: TableName,
    retention: Duration,
}

/// What [`Inbox::process`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Processed<T> {
    /// First delivery: the handler ran and its writes committed with the message id.
    Done(T),
    /// The message id was already recorded: the handler did not run.
    Duplicate,
}

impl<T> Processed<T> {
    /// True for [`Processed::Duplicate`].
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Processed::Duplicate)
    }
}

/// What [`Inbox::record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Recorded {
    /// The id was not there: it is now, in the caller's transaction. Process the message, then
    /// commit.
    New,
    /// The id was already recorded by a committed transaction: skip the message.
    Duplicate,
}

/// A handler run by [`Inbox::process`]: it gets the open transaction and returns a boxed future
/// (`|tx| Box::pin(async move { ... })`), so that it may borrow the transaction.
pub type Handler<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

impl Default for Inbox {
    fn default() -> Self {
        Inbox::DEFAULT
    }
}

impl Inbox {
    /// Table `inbox`, entries kept 7 days.
    pub const DEFAULT: Inbox = Inbox::for_table(TableName::from_static("inbox"));

    /// Default retention: 7 days.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

    /// An inbox in `table`.
    pub const fn for_table(table: TableName) -> Self {
        Inbox {
            table,
            retention: Self::DEFAULT_RETENTION,
        }
    }

    /// How long [`Inbox::purge`] keeps entries. It must be longer than the longest a duplicate
    /// can arrive after the first delivery (broker redelivery, relay retries, replayed dead
    /// letters): an id purged before its duplicate arrives lets the duplicate through.
    pub const fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The inbox table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Creates the inbox table if it does not exist: primary key (`consumer`, `message_id`),
    /// `processed_at`, and an index on `processed_at` for purging. Idempotent.
    pub async fn migrate<DB: InboxSql>(&self, pool: &sqlx::Pool<DB>) -> Result<(), Error> {
        let wrap = |source| Error::database("migrate inbox", &self.table, DB::NAME, source);
        let mut conn = pool.acquire().await.map_err(wrap)?;
        DB::__inbox_migrate(&mut conn, &self.table)
            .await
            .map_err(wrap)
    }

    /// Records that `consumer` processes `message_id`, through `conn`, which must be inside a
    /// transaction: commit it after the message's own writes, or roll it back to leave the
    /// message unprocessed. Returns [`Recorded::Duplicate`] when a committed transaction recorded
    /// it before. A concurrent transaction recording the same id waits for this one to end.
    pub async fn record<C>(
        &self,
        conn: &mut C,
        consumer: &str,
        message_id: &str,
    ) -> Result<Recorded, Error>
    where
        C: OutboxConnection + ?Sized,
        C::Dialect: InboxSql,
    {
        check_key(consumer, "consumer name", consumer)?;
        check_key(consumer, "message id", message_id)?;
        if !conn.__in_transaction() {
            return Err(Error::NoTransaction {
                event_type: format!("inbox entry of {consumer}"),
                table: self.table.to_string(),
                dialect: <C::Dialect as sqlx::Database>::NAME,
            });
        }
        let inserted = <C::Dialect as InboxSql>::__inbox_insert(
            conn.__connection(),
            &self.table,
            consumer,
            message_id,
        )
        .await
        .map_err(|source| {
            Error::database(
                "record",
                &self.table,
                <C::Dialect as sqlx::Database>::NAME,
                source,
            )
        })?;
        Ok(if inserted {
            Recorded::New
        } else {
            tracing::debug!(table = %self.table, consumer, message_id, "duplicate message skipped");
            Recorded::Duplicate
        })
    }

    /// Processes a message exactly once: begins a transaction on `pool`, records `message_id`
    /// for `consumer`, runs `handler` with the transaction and commits. A message already
    /// recorded returns [`Processed::Duplicate`] without running the handler. A handler error
    /// rolls everything back (the id is not recorded), so the message can be retried.
    pub async fn process<DB, T, E, F>(
        &self,
        pool: &sqlx::Pool<DB>,
        consumer: &str,
        message_id: &str,
        handler: F,
    ) -> Result<Processed<T>, E>
    where
        DB: InboxSql,
        E: From<Error>,
        F: for<'c> FnOnce(&'c mut sqlx::Transaction<'static, DB>) -> Handler<'c, T, E>,
    {
        let wrap = |source| Error::database("process", &self.table, DB::NAME, source);
        let mut tx = crate::transaction::begin(pool, None).await.map_err(wrap)?;
        match self.record(&mut *tx, consumer, message_id).await? {
            Recorded::Duplicate => {
                tx.rollback().await.map_err(wrap)?;
                return Ok(Processed::Duplicate);
            }
            Recorded::New => {}
        }
        // On an error the transaction is dropped, which rolls it back.
        let value = handler(&mut tx).await?;
        tx.commit().await.map_err(wrap)?;
        Ok(Processed::Done(value))
    }

    /// Deletes the entries older than the [retention](Inbox::retention), in batches; returns how
    /// many. Run it periodically (hourly, daily).
    pub async fn purge<DB: InboxSql>(&self, pool: &sqlx::Pool<DB>) -> Result<u64, Error> {
        DB::__inbox_purge(pool, &self.table, self.retention, PURGE_BATCH)
            .await
            .map_err(|source| Error::database("purge inbox", &self.table, DB::NAME, source))
    }
}

/// The brokers' helpers: processes through `inbox`, then acknowledges the message (`ack`, after
/// the commit or for a duplicate) or asks for it again (`nack`, after a handler error). Either
/// failing is logged, not returned: after a commit, a redelivery is dropped by the inbox.
#[cfg(any(
    feature = "nats",
    feature = "rabbitmq",
    feature = "redis",
    feature = "mqtt",
    feature = "kafka"
))]
#[allow(clippy::too_many_arguments)]
pub(crate) async fn process_then_acknowledge<DB, M, T, E, F, A, N>(
    inbox: &Inbox,
    pool: &sqlx::Pool<DB>,
    consumer: &str,
    message: &M,
    handler: F,
    broker: &'static str,
    ack: impl FnOnce() -> A,
    nack: impl FnOnce() -> N,
) -> Result<Processed<T>, E>
where
    DB: InboxSql,
    M: InboxMessage + ?Sized,
    E: From<Error>,
    F: for<'c> FnOnce(&'c mut sqlx::Transaction<'static, DB>) -> Handler<'c, T, E>,
    A: Future<Output = Result<(), String>>,
    N: Future<Output = Result<(), String>>,
{
    let id = message.message_id()?;
    let work = async {
        let outcome = inbox.process(pool, consumer, &id, handler).await;
        let (acknowledgement, what) = match &outcome {
            Ok(_) => (ack().await, "ack after processing"),
            Err(_) => (nack().await, "negative ack"),
        };
        if let Err(error) = acknowledgement {
            tracing::warn!(%error, message_id = %id, broker, "{what} failed");
        }
        outcome
    };
    #[cfg(feature = "opentelemetry")]
    let work = spans::processing(message, &id, consumer, work);
    work.await
}

/// Rows deleted per purge statement.
const PURGE_BATCH: i64 = 5_000;

fn check_key(consumer: &str, field: &'static str, value: &str) -> Result<(), Error> {
    let problem = if value.is_empty() {
        "is empty".to_owned()
    } else if value.len() > MAX_KEY_LEN {
        format!("is {} bytes long, more than {MAX_KEY_LEN}", value.len())
    } else if let Some(at) = value.find('\0') {
        format!("holds a NUL character (at byte {at}), which PostgreSQL cannot store")
    } else {
        return Ok(());
    };
    Err(Error::InvalidInboxKey {
        consumer: consumer.to_owned(),
        field,
        problem,
    })
}

/// A database's statements for the inbox and the consumer offsets. Implemented by the library in
/// each `store/<database>/inbox.rs`; part of [`Dialect`](crate::Dialect).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database the outbox supports",
    note = "enable the `postgres`, `mysql` or `sqlite` feature of outbox; in generic code bound the database with `DB: outbox::Dialect`"
)]
pub trait InboxSql:
    sqlx::Database<Connection: OutboxConnection<Dialect = Self>>
    + crate::outbox::RecordingSql
    + crate::sealed::Sealed
{
    /// Inserts the inbox entry unless it exists; true when inserted.
    #[doc(hidden)]
    fn __inbox_insert<'a>(
        conn: &'a mut Self::Connection,
        table: &'a TableName,
        consumer: &'a str,
        message_id: &'a str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'a;

    #[doc(hidden)]
    fn __inbox_migrate<'a>(
        conn: &'a mut Self::Connection,
        table: &'a TableName,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Deletes, `batch` rows per statement, the entries processed more than `older_than` ago;
    /// how many.
    #[doc(hidden)]
    fn __inbox_purge<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        older_than: Duration,
        batch: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Creates the consumer offsets table of [`Offsets`](crate::inbox::Offsets) if missing.
    #[doc(hidden)]
    fn __offsets_migrate<'a>(
        conn: &'a mut Self::Connection,
        table: &'a TableName,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// The stored next offset of each partition of `topic` for `group`.
    #[doc(hidden)]
    fn __offsets_load<'a>(
        conn: &'a mut Self::Connection,
        table: &'a TableName,
        group: &'a str,
        topic: &'a str,
    ) -> impl Future<Output = Result<Vec<(i32, i64)>, sqlx::Error>> + Send + 'a;

    /// Moves the next offset of (group, topic, partition) to `next` unless the record at
    /// `offset` was applied already; true when moved. Locks the partition's row.
    #[doc(hidden)]
    fn __offsets_advance<'a>(
        conn: &'a mut Self::Connection,
        table: &'a TableName,
        partition: (&'a str, &'a str, i32),
        offset: i64,
        next: i64,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'a;
}
