//! The relay's side of the MySQL/MariaDB outbox: claiming with `FOR UPDATE SKIP LOCKED` (MySQL 8,
//! MariaDB 10.6+) in `READ COMMITTED` transactions, settling, dead letters. MySQL has no
//! `NOTIFY`: the relay polls, back to back while there is work.

use std::time::Duration;

use sqlx::{AssertSqlSafe, MySql, MySqlConnection, MySqlPool};

use crate::TableName;
use crate::message::Message;
use crate::relay::Ordering;
use crate::relay::source::{Settlement, SourceConfig};
use crate::store::locking::{ClaimStatements, RowLocking, Scan, TableClaim, TableSource};
use crate::store::table::{
    self, ByteBudget, MessageRow, claimable, deferred, delete_in_batches, head_condition, in_order,
    pending, seq_list,
};

/// The outbox table of a MySQL/MariaDB database, as a relay
/// [`Source`](crate::relay::source::Source): what `Relay::builder(mysql_pool, sink).build()`
/// reads from.
pub type MySqlSource = TableSource<MySql>;

/// A claimed MySQL/MariaDB batch: the rows are locked by its open transaction until it settles.
pub type MySqlClaim = TableClaim<MySql>;

/// The columns of a [`MessageRow`], from a table aliased `o`, in types sqlx decodes on both MySQL
/// and MariaDB (`seq` is unsigned, `JSON` is binary on MySQL).
pub(super) const COLUMNS: &str = "CAST(o.seq AS SIGNED) AS seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, \
                       CAST(o.payload AS CHAR) AS payload, CAST(o.headers AS CHAR) AS headers, o.attempts";

/// The clock of the claims: UTC, as the table's timestamps are.
const NOW: &str = "UTC_TIMESTAMP(6)";

/// The name of the index behind per-aggregate order.
pub(crate) fn aggregate_index(table: &TableName) -> String {
    format!("{}_aggregate_idx", table.parts().1)
}

impl RowLocking for MySql {
    // READ COMMITTED: the claim locks the rows it returns and nothing else. Under the default
    // REPEATABLE READ, its scan would take gap locks up to the end of the table and stall
    // every writer's INSERT until the batch is settled.
    const BEGIN_CLAIM: &'static str =
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";

    /// No `NOTIFY`: the relay polls, back to back while there is work.
    type Wakeup = ();

    fn claim_statements(config: &SourceConfig) -> ClaimStatements {
        let table = &config.table;
        let t = table.quoted('`');
        let head = head_condition(&t, config.ordering, config.parked_only, NOW);
        let pending = claimable("o", config.parked_only);
        // Where order matters, an event deferred until later is stepped over.
        let in_order_o = in_order("o", config.parked_only, NOW);
        let first = format!(
            "SELECT CAST(o.seq AS SIGNED) FROM {t} o FORCE INDEX (PRIMARY) WHERE o.seq >= ? AND {pending} \
             ORDER BY o.seq LIMIT 1"
        );
        // One probe per event in `seq` order, until the batch is full: cheap while most events
        // are heads of their aggregates.
        let scan_heads = format!(
            "SELECT {COLUMNS} FROM {t} o WHERE o.seq >= ? AND {pending} AND o.available_at <= UTC_TIMESTAMP(6) {head} \
             ORDER BY o.seq LIMIT ? FOR UPDATE SKIP LOCKED"
        );
        // When a few aggregates hold most pending events, the plain scan probes every one of
        // them (and each probe steps over the aggregate's kept events): the candidates are then
        // the first event of each aggregate in a window of the next claimable events, read
        // without locks, and locked from a JSON array in that order, through the primary key
        // only (no sort, which would lock every candidate before the limit applies).
        let window_candidates = format!(
            "SELECT CAST(min(w.seq) AS SIGNED) AS seq FROM ( \
               SELECT w.seq, w.aggregate_type, w.aggregate_id FROM {t} w FORCE INDEX (PRIMARY) \
               WHERE w.seq >= ? AND {pending_w} ORDER BY w.seq LIMIT ?) w \
             GROUP BY w.aggregate_type, w.aggregate_id ORDER BY seq",
            pending_w = in_order("w", config.parked_only, NOW),
        );
        let window_heads = format!(
            "SELECT {COLUMNS} FROM JSON_TABLE(?, '$[*]' COLUMNS (seq BIGINT PATH '$')) AS c \
             STRAIGHT_JOIN {t} o FORCE INDEX (PRIMARY) ON o.seq = c.seq \
             WHERE {pending} AND o.available_at <= UTC_TIMESTAMP(6) {head} \
             LIMIT ? FOR UPDATE SKIP LOCKED"
        );
        let (heads, dense_heads, window_candidates) = match config.ordering {
            Ordering::PerAggregate => (window_heads, Some(scan_heads), Some(window_candidates)),
            _ => (scan_heads, None, None),
        };
        // The heads travel as one JSON array, `[[type, id, seq], ...]`. The join starts from
        // them and reads the table through the aggregate index only: a locking read locks every
        // row it reads, and left to itself the optimizer scans the whole table, waiting on (and
        // deadlocking with) the rows other relays hold.
        let index = aggregate_index(table);
        let followers = format!(
            "SELECT {COLUMNS} FROM JSON_TABLE(?, '$[*]' COLUMNS (aggregate_type VARCHAR(255) PATH '$[0]', \
               aggregate_id VARCHAR(255) PATH '$[1]', seq BIGINT PATH '$[2]')) AS h \
             STRAIGHT_JOIN {t} o FORCE INDEX (`{index}`) \
               ON o.aggregate_type = h.aggregate_type AND o.aggregate_id = h.aggregate_id AND o.seq > h.seq \
             WHERE {in_order_o} ORDER BY o.seq LIMIT ? FOR UPDATE"
        );
        ClaimStatements {
            first,
            heads,
            dense_heads,
            window_candidates,
            followers,
            beyond: None,
            beyond_lock: None,
            window_followers: None,
            read: None,
        }
    }

    async fn first_claimable(
        conn: &mut MySqlConnection,
        sql: &str,
        from_seq: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(from_seq)
            .fetch_optional(conn)
            .await
    }

    async fn claim_heads(
        conn: &mut MySqlConnection,
        statements: &ClaimStatements,
        dense: bool,
        scan: Scan,
        limit: i64,
        budget: &mut ByteBudget,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let (Some(scan_heads), Some(candidates)) =
            (&statements.dense_heads, &statements.window_candidates)
        else {
            let rows = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(statements.heads.as_str()))
                .bind(scan.from)
                .bind(limit)
                .fetch(conn);
            return table::messages_within(rows, budget).await;
        };
        if dense {
            let rows = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(scan_heads.as_str()))
                .bind(scan.from)
                .bind(limit)
                .fetch(conn);
            return table::messages_within(rows, budget).await;
        }
        let candidates: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(candidates.as_str()))
            .bind(scan.from)
            .bind(scan.window)
            .fetch_all(&mut *conn)
            .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let candidates = serde_json::to_string(&candidates)
            .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        let rows = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(statements.heads.as_str()))
            .bind(candidates)
            .bind(limit)
            .fetch(conn);
        table::messages_within(rows, budget).await
    }

    async fn claim_followers(
        conn: &mut MySqlConnection,
        statements: &ClaimStatements,
        heads: &[Message],
        _scan: Scan,
        limit: i64,
        budget: &mut ByteBudget,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let heads: Vec<(&str, &str, i64)> = heads
            .iter()
            .map(|m| (m.aggregate_type.as_str(), m.aggregate_id.as_str(), m.seq))
            .collect();
        let heads =
            serde_json::to_string(&heads).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        let rows = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(statements.followers.as_str()))
            .bind(heads)
            .bind(limit)
            .fetch(conn);
        table::messages_within(rows, budget).await
    }

    /// The settlement's statements, in the claim's transaction: published rows deleted (or marked, with `retain`),
    /// failures counted, dead letters set apart.
    async fn settle(
        conn: &mut MySqlConnection,
        table: &TableName,
        retain: bool,
        settlement: &Settlement,
    ) -> Result<(), sqlx::Error> {
        let t = table.quoted('`');
        // Each statement reaches the listed rows through the primary key and no other row: the
        // table's statistics are often those of an empty table (an outbox mostly is one), and the
        // optimizer would then scan it whole, waiting on — and deadlocking with — the rows other
        // relays hold. `DELETE` takes no index hint, so it joins the list instead.
        if !settlement.published.is_empty() {
            if retain {
                let seqs = seq_list(settlement.published.iter().copied());
                let sql = format!(
                    "UPDATE {t} FORCE INDEX (PRIMARY) SET published_at = UTC_TIMESTAMP(6) WHERE seq IN ({seqs})"
                );
                sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
            } else {
                let seqs = serde_json::to_string(&settlement.published)
                    .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
                let sql = format!(
                    "DELETE o FROM JSON_TABLE(?, '$[*]' COLUMNS (seq BIGINT PATH '$')) AS p \
                     STRAIGHT_JOIN {t} o ON o.seq = p.seq"
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(seqs)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        // Failures are few: one statement each.
        let retry = format!(
            "UPDATE {t} SET attempts = attempts + 1, last_error = ?, \
             available_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND WHERE seq = ?"
        );
        for (seq, error, delay) in &settlement.retry {
            sqlx::query(AssertSqlSafe(retry.clone()))
                .bind(error)
                .bind(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX))
                .bind(seq)
                .execute(&mut *conn)
                .await?;
        }
        let dead = format!(
            "UPDATE {t} SET attempts = attempts + 1, last_error = ?, dead_at = UTC_TIMESTAMP(6) WHERE seq = ?"
        );
        for (seq, error) in &settlement.dead {
            sqlx::query(AssertSqlSafe(dead.clone()))
                .bind(error)
                .bind(seq)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// MySQL's `ER_LOCK_DEADLOCK` (1213): InnoDB chose this transaction as the deadlock's victim and
    /// rolled it back.
    fn is_deadlock(error: &sqlx::Error) -> bool {
        error
            .as_database_error()
            .and_then(|error| error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
            .is_some_and(|error| error.number() == 1213)
    }

    /// Deletes published rows older than `retention`, at most `batch` per statement; returns how
    /// many went.
    async fn purge(
        pool: &MySqlPool,
        table: &TableName,
        retention: Duration,
        batch: i64,
    ) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "DELETE FROM {} WHERE published_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND ORDER BY seq LIMIT ?",
            table.quoted('`')
        );
        let retention = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        delete_in_batches(batch, || async {
            Ok(sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(retention)
                .bind(batch)
                .execute(pool)
                .await?
                .rows_affected())
        })
        .await
    }

    /// The oldest pending event: its `seq` and its age in seconds.
    async fn oldest_pending(
        pool: &MySqlPool,
        table: &TableName,
    ) -> Result<Option<(i64, f64)>, sqlx::Error> {
        // As on PostgreSQL: the seq of the oldest pending event, deferred or not; the lag of the
        // oldest that is not deferred, from when it was due.
        let (t, pending) = (table.quoted('`'), pending("o"));
        let deferred = deferred("o", NOW);
        let sql = format!(
            "SELECT (SELECT CAST(o.seq AS SIGNED) FROM {t} o WHERE {pending} ORDER BY o.seq LIMIT 1), \
               (SELECT CAST(TIMESTAMPDIFF(MICROSECOND, CASE WHEN o.attempts = 0 \
                  THEN GREATEST(o.created_at, o.available_at) ELSE o.created_at END, {NOW}) / 1e6 AS DOUBLE) \
                FROM {t} o WHERE {pending} AND NOT {deferred} ORDER BY o.seq LIMIT 1)"
        );
        let (seq, lag): (Option<i64>, Option<f64>) =
            sqlx::query_as(AssertSqlSafe(sql)).fetch_one(pool).await?;
        Ok(seq.map(|seq| (seq, lag.unwrap_or(0.0))))
    }
}

impl crate::relay::source::RelaySql for MySql {
    type Source = MySqlSource;

    fn __source(pool: MySqlPool, config: &SourceConfig) -> MySqlSource {
        TableSource::new(pool, config)
    }

    async fn __discover(
        pool: &MySqlPool,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Vec<(Option<String>, String)>, sqlx::Error> {
        // A schema named in the pattern stays in the names; the current one is left out.
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT CAST(c.table_schema AS CHAR), CAST(c.table_name AS CHAR) FROM information_schema.columns c \
             WHERE c.column_name = 'available_at' \
               AND c.table_schema LIKE COALESCE(?, DATABASE()) ESCAPE '\\\\' \
               AND c.table_name LIKE ? ESCAPE '\\\\' \
               AND EXISTS (SELECT 1 FROM information_schema.columns a \
                 WHERE a.table_schema = c.table_schema AND a.table_name = c.table_name \
                   AND a.column_name = 'aggregate_type') \
             ORDER BY 1, 2",
        )
        .bind(schema)
        .bind(name)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(found, table)| (schema.map(|_| found), table))
            .collect())
    }
}
