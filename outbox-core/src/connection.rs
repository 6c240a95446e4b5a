//! "This is a transaction": the connections the outbox can record through.

use std::future::Future;

use crate::{Outbox, TableName};

/// A database connection the outbox can record through: a [`sqlx::Transaction`], or a dialect's
/// connection (`PgConnection`, `MySqlConnection`, `SqliteConnection`, a pooled one) that is
/// inside a transaction when the row is written — which [`record`](crate::record) checks at run
/// time.
///
/// Implemented by the library for each enabled dialect; the trait is sealed.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a transaction the outbox can record into",
    label = "expected `sqlx::Transaction<'_, DB>` or a database connection",
    note = "the outbox row must commit or roll back with your data, so it is written through the caller's open transaction: take `tx: &mut sqlx::Transaction<'_, Postgres>` (or `&mut PgConnection`, `&mut MySqlConnection`, `&mut SqliteConnection`) and let the caller commit",
    note = "a pool is not a transaction: each query on a pool may run on another connection, in autocommit",
    note = "in code generic over the database, bound it with `DB: outbox::Dialect`"
)]
pub trait OutboxConnection: Send + sealed::Sealed {
    #[doc(hidden)]
    const DIALECT: &'static str;

    #[doc(hidden)]
    fn __in_transaction(&self) -> bool;

    #[doc(hidden)]
    fn __insert<'a>(
        &'a mut self,
        table: &'a TableName,
        row: &'a NewRow,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    #[doc(hidden)]
    fn __migrate<'a>(
        &'a mut self,
        outbox: &'a Outbox,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Inserts the inbox entry unless it exists; true when inserted.
    #[doc(hidden)]
    fn __inbox_insert<'a>(
        &'a mut self,
        table: &'a TableName,
        consumer: &'a str,
        message_id: &'a str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'a;

    #[doc(hidden)]
    fn __inbox_migrate<'a>(
        &'a mut self,
        table: &'a TableName,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Deletes up to `limit` entries older than `older_than_ms`; how many.
    #[doc(hidden)]
    fn __inbox_purge<'a>(
        &'a mut self,
        table: &'a TableName,
        older_than_ms: i64,
        limit: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;
}

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
/// Implemented for `Postgres`, `MySql` and `Sqlite` when their cargo features are on.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database the outbox supports",
    note = "enable the `postgres`, `mysql` or `sqlite` feature of outbox; in generic code bound the database with `DB: outbox::Dialect`"
)]
pub trait Dialect: sqlx::Database<Connection: OutboxConnection> {}

impl<DB> Dialect for DB
where
    DB: sqlx::Database,
    DB::Connection: OutboxConnection,
{
}

/// One checked, serialized row to insert, as the dialects receive it. It owns its data so that
/// the insert future holds nothing of the event (and is `Send` whatever the event type).
#[doc(hidden)]
#[derive(Debug)]
pub struct NewRow {
    pub id: uuid::Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: String,
    pub headers: Option<String>,
}

/// `OutboxConnection` for a wrapper that dereferences to the dialect's connection: every method
/// forwards to it.
macro_rules! forward_to_connection {
    ($($wrapper:ty),*) => {$(
        impl<DB> OutboxConnection for $wrapper
        where
            DB: sqlx::Database,
            DB::Connection: OutboxConnection,
        {
            const DIALECT: &'static str = <DB::Connection as OutboxConnection>::DIALECT;

            fn __in_transaction(&self) -> bool {
                (**self).__in_transaction()
            }

            fn __insert<'a>(
                &'a mut self,
                table: &'a TableName,
                row: &'a NewRow,
            ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a {
                (**self).__insert(table, row)
            }

            fn __migrate<'a>(
                &'a mut self,
                outbox: &'a Outbox,
            ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a {
                (**self).__migrate(outbox)
            }

            fn __inbox_insert<'a>(
                &'a mut self,
                table: &'a TableName,
                consumer: &'a str,
                message_id: &'a str,
            ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'a {
                (**self).__inbox_insert(table, consumer, message_id)
            }

            fn __inbox_migrate<'a>(
                &'a mut self,
                table: &'a TableName,
            ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a {
                (**self).__inbox_migrate(table)
            }

            fn __inbox_purge<'a>(
                &'a mut self,
                table: &'a TableName,
                older_than_ms: i64,
                limit: i64,
            ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a {
                (**self).__inbox_purge(table, older_than_ms, limit)
            }
        }
    )*};
}

forward_to_connection!(sqlx::Transaction<'_, DB>, sqlx::pool::PoolConnection<DB>);

pub(crate) mod sealed {
    /// Only the library implements `OutboxConnection`.
    pub trait Sealed {}

    impl<DB: sqlx::Database> Sealed for sqlx::Transaction<'_, DB> {}
    impl<DB: sqlx::Database> Sealed for sqlx::pool::PoolConnection<DB> {}
}
