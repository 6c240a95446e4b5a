//! The changefeed receiver's staging table (`<table>_changefeed`): where the rows a CockroachDB
//! changefeed pushes wait, durable, until a resolved timestamp covers them, and are then moved
//! into the receiver's own outbox table in commit order (`updated`, then the source's `seq`),
//! for the ordinary relay to publish.
//!
//! A row moved on keeps its line, emptied of its payload, for a while: its id is how a replay
//! (a retried request, a changefeed restarted from an older checkpoint or created again) is
//! known and dropped.

use std::future::Future;

use crate::outbox::RecordingSql;
use crate::{Outbox, TableName};

/// One row as the changefeed sent it, ready to be staged.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Staged {
    pub id: uuid::Uuid,
    /// The changefeed's `updated` timestamp: its wall time in nanoseconds, and its logical
    /// counter.
    pub updated: Timestamp,
    /// The source table's `seq`: the order within one timestamp (one transaction).
    pub seq: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: String,
    pub headers: Option<String>,
}

/// A changefeed timestamp as the staging table stores it: nanoseconds since the Unix epoch
/// (an `i64` holds them until 2262), then the logical counter.
#[doc(hidden)]
pub type Timestamp = (i64, i64);

/// A database's statements for the staging table. Implemented by the library for each database.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database the outbox supports",
    note = "enable the `postgres`, `mysql` or `sqlite` feature of outbox; in generic code bound the database with `DB: outbox::Dialect`"
)]
pub trait Staging: RecordingSql {
    /// Creates the staging table if it is missing.
    fn migrate_staging<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Stages `rows` in one transaction; for each, whether it was new (not a replay).
    fn stage<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        rows: &'a [Staged],
    ) -> impl Future<Output = Result<Vec<bool>, sqlx::Error>> + Send + 'a;

    /// Moves up to `limit` staged rows older than `before` into `outbox`'s table, oldest
    /// first, in one transaction, and marks them released at `now` (Unix seconds); returns how
    /// many it moved.
    fn release<'a>(
        pool: &'a sqlx::Pool<Self>,
        outbox: &'a Outbox,
        before: Timestamp,
        limit: i64,
        now: i64,
    ) -> impl Future<Output = Result<usize, sqlx::Error>> + Send + 'a;

    /// Forgets the rows released before `cutoff` (Unix seconds).
    fn forget_released<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        cutoff: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;
}
