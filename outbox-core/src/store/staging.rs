//! The changefeed receiver's staging table (`<table>_changefeed`): where the rows a CockroachDB
//! changefeed pushes wait, durable, until a resolved timestamp covers them, and are then moved
//! into the receiver's own outbox table in commit order (`updated`, then the source's `seq`),
//! for the ordinary relay to publish ([`crate::changefeed`]).
//!
//! A row moved on keeps its line, emptied of its payload, for a while: its id is how a replay
//! (a retried request, a changefeed restarted from an older checkpoint or created again) is
//! known and dropped.

use std::future::Future;

use crate::{Dialect, Outbox, TableName};

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
pub trait Staging: Dialect {
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

/// The staging statements of one database. `$p` numbers a placeholder (`$1` or `?`), `$ddl`
/// is the table's DDL and `$insert` the insert that skips a known id, both given the quoted
/// staging table.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
macro_rules! staging_statements {
    ($db:ty, $pool:ty, quote = $quote:literal, ddl = $ddl:expr, insert = $insert:expr, p = $p:expr) => {
        /// The staging table of `table`: `<table>_changefeed`.
        fn staging(table: &TableName) -> String {
            table.companion("_changefeed", $quote)
        }

        impl $crate::store::staging::Staging for $db {
            async fn migrate_staging(pool: &$pool, table: &TableName) -> Result<(), sqlx::Error> {
                let ddl: fn(&TableName, &str) -> String = $ddl;
                sqlx::raw_sql(AssertSqlSafe(ddl(table, &staging(table))))
                    .execute(pool)
                    .await?;
                Ok(())
            }

            async fn stage(
                pool: &$pool,
                table: &TableName,
                rows: &[$crate::store::staging::Staged],
            ) -> Result<Vec<bool>, sqlx::Error> {
                let insert: fn(&str) -> String = $insert;
                let sql = insert(&staging(table));
                let mut tx = pool.begin().await?;
                let mut fresh = Vec::with_capacity(rows.len());
                for row in rows {
                    let done = sqlx::query(AssertSqlSafe(sql.as_str()))
                        .bind(row.id.hyphenated().to_string())
                        .bind(row.updated.0)
                        .bind(row.updated.1)
                        .bind(row.seq)
                        .bind(&row.aggregate_type)
                        .bind(&row.aggregate_id)
                        .bind(&row.event_type)
                        .bind(&row.payload)
                        .bind(&row.headers)
                        .execute(&mut *tx)
                        .await?;
                    fresh.push(done.rows_affected() > 0);
                }
                tx.commit().await?;
                Ok(fresh)
            }

            async fn release(
                pool: &$pool,
                outbox: &Outbox,
                before: $crate::store::staging::Timestamp,
                limit: i64,
                now: i64,
            ) -> Result<usize, sqlx::Error> {
                let p: fn(usize) -> String = $p;
                let s = staging(outbox.table());
                let mut tx = pool.begin().await?;
                let rows: Vec<(String, String, String, String, String, Option<String>)> =
                    sqlx::query_as(AssertSqlSafe(format!(
                        "SELECT id, aggregate_type, aggregate_id, event_type, payload, headers \
                         FROM {s} WHERE released = 0 AND (wall < {w} OR (wall = {w2} AND logical < {l})) \
                         ORDER BY wall, logical, seq, id LIMIT {n}",
                        w = p(1),
                        w2 = p(2),
                        l = p(3),
                        n = p(4),
                    )))
                    .bind(before.0)
                    .bind(before.0)
                    .bind(before.1)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut ids = Vec::with_capacity(rows.len());
                for (id, aggregate_type, aggregate_id, event_type, payload, headers) in rows {
                    let uuid = uuid::Uuid::parse_str(&id)
                        .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
                    let row = $crate::connection::NewRow {
                        id: uuid,
                        aggregate_type,
                        aggregate_id,
                        event_type,
                        payload,
                        headers,
                        due: None,
                    };
                    <$db as Dialect>::__insert(&mut *tx, outbox, &row).await?;
                    // A parsed UUID: safe to write into the statement.
                    ids.push(format!("'{}'", uuid.hyphenated()));
                }
                if !ids.is_empty() {
                    sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {s} SET released = {now}, payload = '', headers = NULL WHERE id IN ({})",
                        ids.join(", "),
                        now = p(1),
                    )))
                    .bind(now.max(1))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(ids.len())
            }

            async fn forget_released(
                pool: &$pool,
                table: &TableName,
                cutoff: i64,
            ) -> Result<u64, sqlx::Error> {
                let p: fn(usize) -> String = $p;
                let sql = format!(
                    "DELETE FROM {} WHERE released > 0 AND released < {}",
                    staging(table),
                    p(1)
                );
                Ok(sqlx::query(AssertSqlSafe(sql))
                    .bind(cutoff)
                    .execute(pool)
                    .await?
                    .rows_affected())
            }
        }
    };
}
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) use staging_statements;
