//! The databases: each one's SQL, whole statements, in `store/<database>/`, behind one sealed
//! trait, [`Dialect`] — the way sqlx's drivers implement `sqlx::Database`. The rest of the
//! crate (recording, the relay, the inbox, the administrative queries) is written once against
//! that trait and never names a database.
//!
//! The public items of each database's module are its relay [`Source`]
//! and claim, what [`Relay::builder`](crate::relay::Relay::builder) reads from given that
//! database's pool: [`TableSource`] on the databases with row locks (`postgres::PgSource`,
//! `mysql::MySqlSource`), `sqlite::SqliteSource` on SQLite, where relays take turns.

use std::future::Future;
use std::time::Duration;

use crate::Error;
use crate::admin::{EventCounts, RelayInstance, SlotStatus};
use crate::connection::NewRow;
use crate::message::{DeadLetter, DeadLetterFilter, Message};
use crate::relay::IntoSource;
use crate::relay::source::{Source, SourceConfig};
use crate::{Outbox, OutboxConnection, TableName};

/// The methods of a database's `Dialect` impl that call the function of the same name in its
/// `inbox` and `admin` modules: `$pool` and `$conn` are its pool and connection types.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
macro_rules! forward_to_modules {
    ($pool:ty, $conn:ty) => {
        async fn __inbox_insert(
            conn: &mut $conn,
            table: &TableName,
            consumer: &str,
            message_id: &str,
        ) -> Result<bool, sqlx::Error> {
            inbox::insert(conn, table, consumer, message_id).await
        }

        async fn __inbox_migrate(conn: &mut $conn, table: &TableName) -> Result<(), sqlx::Error> {
            inbox::migrate(conn, table).await
        }

        async fn __inbox_purge(
            pool: &$pool,
            table: &TableName,
            older_than: std::time::Duration,
            batch: i64,
        ) -> Result<u64, sqlx::Error> {
            inbox::purge(pool, table, older_than, batch).await
        }

        async fn __offsets_migrate(conn: &mut $conn, table: &TableName) -> Result<(), sqlx::Error> {
            inbox::offsets_migrate(conn, table).await
        }

        async fn __offsets_load(
            conn: &mut $conn,
            table: &TableName,
            group: &str,
            topic: &str,
        ) -> Result<Vec<(i32, i64)>, sqlx::Error> {
            inbox::offsets_load(conn, table, group, topic).await
        }

        async fn __offsets_advance(
            conn: &mut $conn,
            table: &TableName,
            partition: (&str, &str, i32),
            offset: i64,
            next: i64,
        ) -> Result<bool, sqlx::Error> {
            inbox::offsets_advance(conn, table, partition, offset, next).await
        }

        async fn __dead_letters(
            pool: &$pool,
            table: &TableName,
            filter: &$crate::relay::DeadLetterFilter,
            limit: i64,
        ) -> Result<Vec<$crate::relay::DeadLetter>, sqlx::Error> {
            admin::dead_letters(pool, table, filter, limit).await
        }

        async fn __count_dead_letters(
            pool: &$pool,
            table: &TableName,
            filter: &$crate::relay::DeadLetterFilter,
        ) -> Result<u64, sqlx::Error> {
            admin::count_dead_letters(pool, table, filter).await
        }

        async fn __purge_dead_letters(
            pool: &$pool,
            table: &TableName,
            filter: &$crate::relay::DeadLetterFilter,
        ) -> Result<u64, sqlx::Error> {
            admin::purge_dead_letters(pool, table, filter).await
        }

        async fn __replay(
            pool: &$pool,
            table: &TableName,
            ids: Option<&[uuid::Uuid]>,
        ) -> Result<u64, sqlx::Error> {
            admin::replay(pool, table, ids).await
        }

        async fn __status(
            pool: &$pool,
            table: &TableName,
        ) -> Result<Vec<$crate::admin::EventCounts>, sqlx::Error> {
            admin::status(pool, table).await
        }

        async fn __relays(
            pool: &$pool,
            table: &TableName,
        ) -> Result<Option<Vec<$crate::admin::RelayInstance>>, sqlx::Error> {
            admin::relays(pool, table).await
        }

        async fn __last_seq(pool: &$pool, table: &TableName) -> Result<i64, sqlx::Error> {
            admin::last_seq(pool, table).await
        }

        async fn __events_after(
            pool: &$pool,
            table: &TableName,
            after: i64,
            limit: i64,
        ) -> Result<Vec<$crate::relay::Message>, sqlx::Error> {
            admin::events_after(pool, table, after, limit).await
        }

        async fn __committed(
            pool: &$pool,
            table: &TableName,
            after: i64,
            limit: i64,
        ) -> Result<Vec<$crate::audit::Committed>, sqlx::Error> {
            admin::committed(pool, table, after, limit).await
        }
    };
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) mod journal;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod locking;
#[doc(hidden)]
pub mod staging;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) mod table;

#[cfg(any(feature = "postgres", feature = "mysql"))]
#[doc(hidden)]
pub use locking::RowLocking;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub use locking::{TableClaim, TableSource};

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// A database the outbox supports, for code generic over the database:
///
/// ```
/// # #[cfg(feature = "postgres")] {
/// use outbox::Dialect;
///
/// async fn open_account<DB: Dialect>(tx: &mut sqlx::Transaction<'_, DB>) { /* ... */ }
/// # }
/// ```
///
/// Implemented for `Postgres`, `MySql` and `Sqlite` when their cargo features are on; the
/// trait is sealed. Its methods are the library's: each database's statements for recording,
/// migrations, the relay's table source, the inbox and the administrative queries.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database the outbox supports",
    note = "enable the `postgres`, `mysql` or `sqlite` feature of outbox; in generic code bound the database with `DB: outbox::Dialect`"
)]
pub trait Dialect:
    sqlx::Database<Connection: OutboxConnection<Dialect = Self>> + sealed::Sealed
{
    /// The outbox table as a relay source.
    #[doc(hidden)]
    type Source: Source;

    #[doc(hidden)]
    fn __insert<'a>(
        conn: &'a mut Self::Connection,
        outbox: &'a Outbox,
        row: &'a NewRow,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// The outbox tables (those with the outbox's columns) whose schema is like `schema`
    /// (`None`: the connection's current one) and whose name is like `name`: SQL `LIKE`
    /// patterns with `\` as the escape. Sorted.
    #[doc(hidden)]
    fn __discover<'a>(
        pool: &'a sqlx::Pool<Self>,
        schema: Option<&'a str>,
        name: &'a str,
    ) -> impl Future<Output = Result<Vec<(Option<String>, String)>, sqlx::Error>> + Send + 'a;

    /// Deletes the delayed event `id` unless it was published or dead; true when deleted.
    #[doc(hidden)]
    fn __cancel<'a>(
        conn: &'a mut Self::Connection,
        table: &'a TableName,
        id: uuid::Uuid,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'a;

    #[doc(hidden)]
    fn __migrate<'a>(
        conn: &'a mut Self::Connection,
        outbox: &'a Outbox,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// After [`__migrate`](Dialect::__migrate), for an outbox whose relay tails the transaction
    /// log: what the log needs (PostgreSQL only).
    #[doc(hidden)]
    fn __migrate_log<'a>(
        conn: &'a mut Self::Connection,
        outbox: &'a Outbox,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        let _ = (conn, outbox);
        async {
            Err(Error::Unsupported {
                feature: "a relay tailing the transaction log (`Outbox::log_tailing`, `Outbox::wal_messages`)",
                dialect: Self::NAME,
                hint: "relay from the outbox table (leave `log_tailing` and `wal_messages` off)",
            })
        }
    }

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

    #[doc(hidden)]
    fn __source(pool: sqlx::Pool<Self>, config: &SourceConfig) -> Self::Source;

    /// The dead letters `filter` selects, oldest first, at most `limit`.
    #[doc(hidden)]
    fn __dead_letters<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        filter: &'a DeadLetterFilter,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, sqlx::Error>> + Send + 'a;

    #[doc(hidden)]
    fn __count_dead_letters<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        filter: &'a DeadLetterFilter,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Deletes the dead letters `filter` selects; how many.
    #[doc(hidden)]
    fn __purge_dead_letters<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        filter: &'a DeadLetterFilter,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Makes dead letters deliverable again, attempts reset. `ids`: `None` for all.
    #[doc(hidden)]
    fn __replay<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        ids: Option<&'a [uuid::Uuid]>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Counts per aggregate type and event type, in that order.
    #[doc(hidden)]
    fn __status<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<Vec<EventCounts>, sqlx::Error>> + Send + 'a;

    /// The relays at work on this table, `None` where the database cannot tell.
    #[doc(hidden)]
    fn __relays<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<Option<Vec<RelayInstance>>, sqlx::Error>> + Send + 'a;

    /// The log relay's replication slot of this table, where the database has them.
    #[doc(hidden)]
    fn __slot<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<Option<SlotStatus>, sqlx::Error>> + Send + 'a {
        let _ = (pool, table);
        async { Ok(None) }
    }

    /// The highest `seq` in the table, 0 when it is empty.
    #[doc(hidden)]
    fn __last_seq<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send + 'a;

    /// The events recorded after `after` (a `seq`), whatever their state, in order, at most
    /// `limit`.
    #[doc(hidden)]
    fn __events_after<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Message>, sqlx::Error>> + Send + 'a;

    /// What an audit needs of the events recorded after `after` (a `seq`): id, order,
    /// aggregate and state, in order, at most `limit`.
    #[doc(hidden)]
    fn __committed<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<crate::audit::Committed>, sqlx::Error>> + Send + 'a;
}

impl<DB: Dialect> IntoSource for sqlx::Pool<DB> {
    type Source = DB::Source;

    fn __into_source(self, config: &SourceConfig) -> DB::Source {
        DB::__source(self, config)
    }
}

/// Begins a transaction on a connection of `pool`, with `statement` in place of `BEGIN` when
/// given: [`begin_on`] a connection acquired first (cancelling an acquisition is safe).
pub(crate) async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    begin_on(pool.acquire().await?, statement).await
}

/// Begins a transaction on `conn` in a task of its own. sqlx counts a transaction only once the
/// server has answered its `BEGIN`: a caller cancelled while waiting for that answer — a relay
/// task aborted, a consumer's `select!` or timeout — would hand the connection back to the pool
/// inside a transaction nobody ends, where its next user's statements would run, never commit
/// and keep their locks. Run apart, the `BEGIN` completes whatever becomes of the caller, and a
/// transaction nobody takes is rolled back when the task drops it.
pub(crate) async fn begin_on<DB: sqlx::Database>(
    conn: sqlx::pool::PoolConnection<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let statement = statement.map(sqlx::SqlSafeStr::into_sql_str);
    match tokio::spawn(sqlx::Transaction::begin(conn, statement)).await {
        Ok(begun) => begun,
        Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
        Err(_) => Err(sqlx::Error::WorkerCrashed), // the runtime is shutting down
    }
}

pub(crate) mod sealed {
    /// Only the library implements `Dialect` and `OutboxConnection`.
    pub trait Sealed {}

    impl<DB: sqlx::Database> Sealed for sqlx::Transaction<'_, DB> {}
    impl<DB: sqlx::Database> Sealed for sqlx::pool::PoolConnection<DB> {}
}
