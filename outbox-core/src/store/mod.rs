//! The databases: each one's SQL, whole statements, in `store/<database>/`. [`Dialect`], the one
//! bound users write, is made of sealed traits of one concern each — recording
//! ([`RecordingSql`]), the relay ([`RelaySql`]), the inbox ([`InboxSql`]), the operator's queries
//! ([`AdminSql`]), the audit ([`AuditSql`]), the changefeed receiver ([`Staging`]) — the way
//! sqlx's drivers implement `sqlx::Database` and `Migrate`. Each trait lives beside the code that
//! uses it, which never names a database; each database implements it in the file of the same
//! concern (`store/postgres/inbox.rs`, …). This module is the top of the crate: it imports the
//! others, none imports it.
//!
//! The public items of each database's module are its relay [`Source`]
//! and claim, what [`Relay::builder`](crate::relay::Relay::builder) reads from given that
//! database's pool: [`TableSource`] on the databases with row locks (`postgres::PgSource`,
//! `mysql::MySqlSource`), `sqlite::SqliteSource` on SQLite, where relays take turns.

use crate::OutboxConnection;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) mod journal;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod locking;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) mod staging;
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
    sqlx::Database<Connection: OutboxConnection<Dialect = Self>>
    + RecordingSql
    + RelaySql
    + InboxSql
    + AdminSql
    + AuditSql
    + Staging
    + crate::sealed::Sealed
{
}

/// The concerns a [`Dialect`] is made of, each a trait beside the code that uses it, with this
/// database's statements in the file of the same concern in `store/<database>/`.
#[doc(hidden)]
pub use crate::{
    admin::AdminSql, audit::AuditSql, changefeed::Staging, inbox::InboxSql, outbox::RecordingSql,
    relay::source::RelaySql,
};
