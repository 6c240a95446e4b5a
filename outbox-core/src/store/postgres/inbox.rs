//! The inbox on PostgreSQL: `INSERT ... ON CONFLICT DO NOTHING` on the primary key.

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::TableName;
use crate::store::table::delete_in_batches;

impl crate::inbox::InboxSql for sqlx::Postgres {
    async fn __inbox_insert(
        conn: &mut PgConnection,
        table: &TableName,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            table.quoted('"')
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(consumer)
            .bind(message_id)
            .execute(conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn __inbox_migrate(
        conn: &mut PgConnection,
        table: &TableName,
    ) -> Result<(), sqlx::Error> {
        let quoted = table.quoted('"');
        let (schema, name) = table.parts();
        let mut sql = String::new();
        if let Some(schema) = schema {
            sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\";"));
        }
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {quoted} (
                 consumer     TEXT        NOT NULL,
                 message_id   TEXT        NOT NULL,
                 processed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                 PRIMARY KEY (consumer, message_id)
             );
             CREATE INDEX IF NOT EXISTS \"{name}_processed_idx\" ON {quoted} (processed_at);"
        ));
        // Serialized like the outbox's migration: concurrent CREATE ... IF NOT EXISTS can collide
        // (CockroachDB has no advisory locks; its schema changes are serialized already).
        let cockroach = super::cockroach::version(conn).await?.is_some();
        let mut tx = sqlx::Connection::begin(conn).await?;
        if !cockroach {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(format!("outbox migrate {table}"))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// Deletes the entries older than `older_than`, `batch` per statement.
    async fn __inbox_purge(
        pool: &PgPool,
        table: &TableName,
        older_than: Duration,
        batch: i64,
    ) -> Result<u64, sqlx::Error> {
        let older_than_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let quoted = table.quoted('"');
        let sql = format!(
            "DELETE FROM {quoted} WHERE ctid IN (SELECT ctid FROM {quoted} \
             WHERE processed_at < clock_timestamp() - make_interval(secs => $1::double precision / 1000) \
             LIMIT $2)"
        );
        delete_in_batches(batch, || async {
            let done = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(older_than_ms)
                .bind(batch)
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    /// The consumer offsets of a partitioned log (Kafka): one row per consumer group, topic and
    /// partition, holding the next offset to apply.
    async fn __offsets_migrate(
        conn: &mut PgConnection,
        table: &TableName,
    ) -> Result<(), sqlx::Error> {
        let mut sql = String::new();
        if let Some(schema) = table.parts().0 {
            sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\";"));
        }
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 consumer_group TEXT        NOT NULL,
                 topic          TEXT        NOT NULL,
                 partition_id   INTEGER     NOT NULL,
                 next_offset    BIGINT      NOT NULL,
                 updated_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                 PRIMARY KEY (consumer_group, topic, partition_id)
             )",
            table.quoted('"')
        ));
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
        Ok(())
    }

    /// The stored next offset of each partition of `topic` for `group`.
    async fn __offsets_load(
        conn: &mut PgConnection,
        table: &TableName,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(i32, i64)>, sqlx::Error> {
        let sql = format!(
            "SELECT partition_id, next_offset FROM {} WHERE consumer_group = $1 AND topic = $2 \
             ORDER BY partition_id",
            table.quoted('"')
        );
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(group)
            .bind(topic)
            .fetch_all(conn)
            .await
    }

    /// Moves the partition's next offset to `next` unless it is past `offset` already (the record
    /// at `offset` was applied); true when moved. The row lock makes a concurrent advance of the
    /// same partition wait for this transaction, then see its result.
    async fn __offsets_advance(
        conn: &mut PgConnection,
        table: &TableName,
        (group, topic, partition): (&str, &str, i32),
        offset: i64,
        next: i64,
    ) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} AS o (consumer_group, topic, partition_id, next_offset) \
             VALUES ($1, $2, $3, $5) ON CONFLICT (consumer_group, topic, partition_id) \
             DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = clock_timestamp() \
             WHERE o.next_offset <= $4",
            table.quoted('"')
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(group)
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .bind(next)
            .execute(conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
