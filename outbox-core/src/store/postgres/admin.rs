//! The administrative queries on a PostgreSQL outbox: dead letters, status, relays, tail.

use sqlx::{AssertSqlSafe, PgPool, Row};

use super::relay::COLUMNS;
use crate::TableName;
use crate::admin::{EventCounts, RELAY_APPLICATION_PREFIX, RelayInstance};
use crate::message::{DeadLetter, DeadLetterFilter, Message};
use crate::store::table::{
    self, FilterValue, MessageRow, dead_letter_conditions, deferred, pending,
};

/// The dead-letter filter's conditions in this dialect.
fn filtered(filter: &DeadLetterFilter) -> (String, Vec<FilterValue<'_>>) {
    dead_letter_conditions(
        filter,
        |n| format!("${n}"),
        |p| format!("o.dead_at <= clock_timestamp() - make_interval(secs => {p})"),
    )
}

/// Binds the filter's values, in the order of their placeholders.
fn bind<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    values: Vec<FilterValue<'q>>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for value in values {
        query = match value {
            FilterValue::Text(text) => query.bind(text),
            FilterValue::Id(id) => query.bind(id),
            FilterValue::Age(age) => query.bind(age.as_secs_f64()),
        };
    }
    query
}

impl crate::admin::AdminSql for sqlx::Postgres {
    /// The dead letters of `table` that `filter` selects, oldest first.
    async fn __dead_letters(
        pool: &PgPool,
        table: &TableName,
        filter: &DeadLetterFilter,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, sqlx::Error> {
        let (conditions, values) = filtered(filter);
        let sql = format!(
            "SELECT {COLUMNS}, o.last_error, EXTRACT(EPOCH FROM clock_timestamp() - o.dead_at)::float8 AS dead_secs FROM {} o \
             WHERE o.dead_at IS NOT NULL{conditions} ORDER BY o.seq LIMIT ${}",
            table.quoted('"'),
            values.len() + 1,
        );
        let rows = bind(sqlx::query(AssertSqlSafe(sql)), values)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        table::dead_letters(&rows)
    }

    /// How many dead letters of `table` `filter` selects.
    async fn __count_dead_letters(
        pool: &PgPool,
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
        pool: &PgPool,
        table: &TableName,
        filter: &DeadLetterFilter,
    ) -> Result<u64, sqlx::Error> {
        let (conditions, values) = filtered(filter);
        let sql = format!(
            "DELETE FROM {} o WHERE o.dead_at IS NOT NULL{conditions}",
            table.quoted('"')
        );
        let done = bind(sqlx::query(AssertSqlSafe(sql)), values)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Makes dead letters deliverable again, attempts reset. `ids`: `None` for all.
    async fn __replay(
        pool: &PgPool,
        table: &TableName,
        ids: Option<&[uuid::Uuid]>,
    ) -> Result<u64, sqlx::Error> {
        let t = table.quoted('"');
        let done = match ids {
            Some(ids) => {
                let sql = format!(
                    "UPDATE {t} SET dead_at = NULL, attempts = 0, available_at = clock_timestamp() \
                     WHERE dead_at IS NOT NULL AND id = ANY($1)"
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(ids)
                    .execute(pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "UPDATE {t} SET dead_at = NULL, attempts = 0, available_at = clock_timestamp() WHERE dead_at IS NOT NULL"
                );
                sqlx::query(AssertSqlSafe(sql)).execute(pool).await?
            }
        };
        Ok(done.rows_affected())
    }

    /// Counts per aggregate type and event type.
    async fn __status(pool: &PgPool, table: &TableName) -> Result<Vec<EventCounts>, sqlx::Error> {
        let (pending, deferred) = (pending("o"), deferred("o", "clock_timestamp()"));
        let sql = format!(
            "SELECT aggregate_type, event_type,
                    COUNT(*) FILTER (WHERE {pending} AND NOT {deferred}),
                    COUNT(*) FILTER (WHERE {pending} AND {deferred}),
                    COUNT(*) FILTER (WHERE dead_at IS NOT NULL),
                    COUNT(*) FILTER (WHERE published_at IS NOT NULL),
                    EXTRACT(EPOCH FROM clock_timestamp() - MIN(created_at) FILTER (WHERE {pending} AND NOT {deferred}))::float8,
                    EXTRACT(EPOCH FROM MIN(available_at) FILTER (WHERE {pending} AND {deferred}) - clock_timestamp())::float8
             FROM {} o GROUP BY 1, 2 ORDER BY 1, 2",
            table.quoted('"')
        );
        let rows = sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await?;
        Ok(rows.into_iter().map(EventCounts::from_row).collect())
    }

    /// The connections of this database named by a relay (`application_name`), per relay and host.
    async fn __relays(
        pool: &PgPool,
        _table: &TableName,
    ) -> Result<Option<Vec<RelayInstance>>, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT substr(application_name, length($1) + 1), \
                    COALESCE(host(client_addr), 'local') || ', ' || COUNT(*) || ' connections' \
             FROM pg_stat_activity WHERE starts_with(application_name, $1) \
               AND datname = current_database() \
             GROUP BY application_name, client_addr ORDER BY 1",
        )
        .bind(RELAY_APPLICATION_PREFIX)
        .fetch_all(pool)
        .await?;
        Ok(Some(
            rows.into_iter()
                .map(|(instance, detail)| RelayInstance { instance, detail })
                .collect(),
        ))
    }

    /// The highest `seq` in the table (0 when empty).
    async fn __last_seq(pool: &PgPool, table: &TableName) -> Result<i64, sqlx::Error> {
        let sql = format!(
            "SELECT COALESCE(MAX(seq), 0)::bigint FROM {}",
            table.quoted('"')
        );
        sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await
    }

    /// The events recorded after `after`, in `seq` order, at most `limit`.
    async fn __events_after(
        pool: &PgPool,
        table: &TableName,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} o WHERE o.seq > $1 ORDER BY o.seq LIMIT $2",
            table.quoted('"')
        );
        let rows = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch(pool);
        let mut budget = table::ByteBudget::new(crate::relay::DEFAULT_MAX_BATCH_BYTES);
        table::messages_within(rows, &mut budget).await
    }

    async fn __slot(
        pool: &PgPool,
        table: &TableName,
    ) -> Result<Option<crate::admin::SlotStatus>, sqlx::Error> {
        super::wal::slot(pool, table).await
    }
}

impl crate::audit::AuditSql for sqlx::Postgres {
    /// What an audit needs of the events recorded after `after`, in `seq` order, at most `limit`.
    async fn __committed(
        pool: &PgPool,
        table: &TableName,
        after: i64,
        limit: i64,
    ) -> Result<Vec<crate::audit::Committed>, sqlx::Error> {
        // A log-tailed table records where each event it kept was committed (`commit_lsn`).
        let logged: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass \
             AND attname = 'commit_lsn' AND NOT attisdropped)",
        )
        .bind(table.quoted('"'))
        .fetch_one(pool)
        .await?;
        let position = if logged {
            ", (o.commit_lsn - '0/0'::pg_lsn)::int8 AS commit_position"
        } else {
            ""
        };
        let sql = format!(
            "SELECT o.seq AS seq, o.id::text AS id, o.aggregate_type, o.aggregate_id, ({STATE})::bigint AS state{position} \
             FROM {} o WHERE o.seq > $1 ORDER BY o.seq LIMIT $2",
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
