//! "This is a transaction": the connections the outbox can record through.

use std::future::Future;

use crate::outbox::Outbox;
use crate::{Error, TableName};

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
pub trait OutboxConnection: Send + crate::sealed::Sealed {
    /// The database this connection belongs to.
    #[doc(hidden)]
    type Dialect: RecordingSql;

    #[doc(hidden)]
    fn __in_transaction(&self) -> bool;

    /// The database's own connection underneath, which the dialect's statements run on.
    #[doc(hidden)]
    fn __connection(&mut self) -> &mut <Self::Dialect as sqlx::Database>::Connection;
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
    /// When it may be published, if later than now.
    pub due: Option<Due>,
}

/// When a delayed event becomes due, as the dialects write it: `micros` after the database's
/// clock at the insert (`from_now`), or after the Unix epoch.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub micros: i64,
    pub from_now: bool,
}

/// `OutboxConnection` for a database's own connection type, in its store module.
#[allow(unused_macros)] // without a database feature
macro_rules! outbox_connection {
    ($connection:ty => $database:ty) => {
        impl $crate::sealed::Sealed for $connection {}

        impl $crate::OutboxConnection for $connection {
            type Dialect = $database;

            fn __in_transaction(&self) -> bool {
                sqlx::Connection::is_in_transaction(self)
            }

            fn __connection(&mut self) -> &mut $connection {
                self
            }
        }
    };
}
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) use outbox_connection;

impl<DB: RecordingSql> OutboxConnection for sqlx::Transaction<'_, DB> {
    type Dialect = DB;

    fn __in_transaction(&self) -> bool {
        sqlx::Connection::is_in_transaction(&**self)
    }

    fn __connection(&mut self) -> &mut DB::Connection {
        self
    }
}

impl<DB: RecordingSql> OutboxConnection for sqlx::pool::PoolConnection<DB> {
    type Dialect = DB;

    fn __in_transaction(&self) -> bool {
        sqlx::Connection::is_in_transaction(&**self)
    }

    fn __connection(&mut self) -> &mut DB::Connection {
        self
    }
}

/// A database's statements for recording: inserting and cancelling events, creating the table.
/// Implemented by the library in each `store/<database>/mod.rs`; part of
/// [`Dialect`](crate::Dialect).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database the outbox supports",
    note = "enable the `postgres`, `mysql` or `sqlite` feature of outbox; in generic code bound the database with `DB: outbox::Dialect`"
)]
pub trait RecordingSql: sqlx::Database + crate::sealed::Sealed {
    #[doc(hidden)]
    fn __insert<'a>(
        conn: &'a mut Self::Connection,
        outbox: &'a Outbox,
        row: &'a NewRow,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

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
}
