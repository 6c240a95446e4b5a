//! The administrative queries on an SQLite outbox: dead letters, status, the lease holder, tail.

use sqlx::{AssertSqlSafe, Row, SqlitePool};

use super::relay::{COLUMNS, NOW, companion, now_ms};
use crate::TableName;
use crate::admin::{EventCounts, RelayInstance};
use crate::message::{DeadLetter, DeadLetterFilter, Message};
use crate::store::table::{
    self, FilterValue, MessageRow, dead_letter_conditions, deferred, pending,
};

/// The dead-letter filter's conditions in this dialect.
fn filtered(filter: &DeadLetterFilter) -> (String, Vec<FilterValue<'_>>) {
    dead_letter_conditions(
        filter,
        |_| "?".to_owned(),
        |p| format!("julianday(o.dead_at) <= julianday('now') - {p} / 86400.0"),
    )
}

/// Binds the filter's values, in the order of their placeholders.
fn bind<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    values: Vec<FilterValue<'q>>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for value in values {
        query = match value {
            FilterValue::Text(text) => query.bind(text),
            FilterValue::Id(id) => query.bind(id.hyphenated().to_string()),
            FilterValue::Age(age) => query.bind(age.as_secs_f64()),
        };
    }
    query
}

impl crate::admin::AdminSql for sqlx::Sqlite {
    /// The dead letters of `table` that `filter` selects, oldest first.
    async fn __dead_letters(
        pool: &SqlitePool,
        table: &TableName,
        filter: &DeadLetterFilter,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, sqlx::Error> {
        let (conditions, values) = filtered(filter);
        let sql = format!(
            "SELECT {COLUMNS}, o.last_error, (julianday('now') - julianday(o.dead_at)) * 86400.0 AS dead_secs FROM {} o \
             WHERE o.dead_at IS NOT NULL{conditions} ORDER BY o.seq LIMIT ?",
            table.quoted('"'),
        );
        let rows = bind(sqlx::query(AssertSqlSafe(sql)), values)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        table::dead_letters(&rows)
    }

    /// How many dead letters of `table` `filter` selects.
    async fn __count_dead_letters(
        pool: &SqlitePool,
        table: &TableName,
        filter: &DeadLetterFilter,
    ) -> Result<u64, sqlx::Error> {
        let (conditions, values) = filtered(filter);
        let sql = format!(
            "SELECT count(*) AS dead FROM {} o WHERE o.dead_at IS NOT NULL{conditions}",
            table.quoted('"')
        );
        let row = bind(sqlx::query(AssertSqlSafe(sql)), values)
            .fetch_one(pool)
            .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("dead")?).unwrap_or(0))
    }

    /// Deletes the dead letters of `table` that `filter` selects.
    async fn __purge_dead_letters(
        pool: &SqlitePool,
        table: &TableName,
        filter: &DeadLetterFilter,
    ) -> Result<u64, sqlx::Error> {
        let (conditions, values) = filtered(filter);
        let t = table.quoted('"');
        let sql = format!(
            "DELETE FROM {t} WHERE seq IN (SELECT o.seq FROM {t} o WHERE o.dead_at IS NOT NULL{conditions})"
        );
        let done = bind(sqlx::query(AssertSqlSafe(sql)), values)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Makes dead letters deliverable again, attempts reset. `ids`: `None` for all.
    async fn __replay(
        pool: &SqlitePool,
        table: &TableName,
        ids: Option<&[uuid::Uuid]>,
    ) -> Result<u64, sqlx::Error> {
        let reset = format!(
            "UPDATE {} SET dead_at = NULL, attempts = 0, available_at = {NOW} WHERE dead_at IS NOT NULL",
            table.quoted('"')
        );
        let done = match ids {
            Some([]) => return Ok(0),
            Some(ids) => {
                let placeholders = vec!["?"; ids.len()].join(",");
                let sql = format!("{reset} AND id IN ({placeholders})");
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for id in ids {
                    query = query.bind(id.hyphenated().to_string());
                }
                query.execute(pool).await?
            }
            None => sqlx::query(AssertSqlSafe(reset)).execute(pool).await?,
        };
        Ok(done.rows_affected())
    }

    /// Counts per aggregate type and event type.
    async fn __status(
        pool: &SqlitePool,
        table: &TableName,
    ) -> Result<Vec<EventCounts>, sqlx::Error> {
        let (pending, deferred) = (pending("o"), deferred("o", NOW));
        let sql = format!(
            "SELECT aggregate_type, event_type,
                    SUM({pending} AND NOT {deferred}), SUM({pending} AND {deferred}),
                    SUM(dead_at IS NOT NULL), SUM(published_at IS NOT NULL),
                    (julianday('now') - julianday(MIN(CASE WHEN {pending} AND NOT {deferred} THEN created_at END))) * 86400.0,
                    (julianday(MIN(CASE WHEN {pending} AND {deferred} THEN available_at END)) - julianday('now')) * 86400.0
             FROM {} o GROUP BY 1, 2 ORDER BY 1, 2",
            table.quoted('"')
        );
        let rows = sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await?;
        Ok(rows.into_iter().map(EventCounts::from_row).collect())
    }

    /// The holder of the relay lease, while it is valid.
    async fn __relays(
        pool: &SqlitePool,
        table: &TableName,
    ) -> Result<Option<Vec<RelayInstance>>, sqlx::Error> {
        let sql = format!(
            "SELECT holder FROM {} WHERE name = 'relay' AND expires_at > ?",
            companion(table, "_lease")
        );
        let holders: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(now_ms())
            .fetch_all(pool)
            .await?;
        Ok(Some(
            holders
                .into_iter()
                .map(|instance| RelayInstance {
                    instance,
                    detail: "holds the lease".to_owned(),
                })
                .collect(),
        ))
    }

    /// The highest `seq` in the table (0 when empty).
    async fn __last_seq(pool: &SqlitePool, table: &TableName) -> Result<i64, sqlx::Error> {
        let sql = format!("SELECT COALESCE(MAX(seq), 0) FROM {}", table.quoted('"'));
        sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await
    }

    /// The events recorded after `after`, in `seq` order, at most `limit`.
    async fn __events_after(
        pool: &SqlitePool,
        table: &TableName,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} o WHERE o.seq > ? ORDER BY o.seq LIMIT ?",
            table.quoted('"')
        );
        let rows = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch(pool);
        let mut budget = table::ByteBudget::new(crate::relay::DEFAULT_MAX_BATCH_BYTES);
        table::messages_within(rows, &mut budget).await
    }
}

impl crate::audit::AuditSql for sqlx::Sqlite {
    /// What an audit needs of the events recorded after `after`, in `seq` order, at most `limit`.
    async fn __committed(
        pool: &SqlitePool,
        table: &TableName,
        after: i64,
        limit: i64,
    ) -> Result<Vec<crate::audit::Committed>, sqlx::Error> {
        let sql = format!(
            "SELECT o.seq AS seq, o.id AS id, o.aggregate_type, o.aggregate_id, {STATE} AS state \
             FROM {} o WHERE o.seq > ? ORDER BY o.seq LIMIT ?",
            table.quoted('"'),
            STATE = table::STATE,
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        table::committed(&rows)
    }
}
