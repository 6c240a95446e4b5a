//! The inbox on SQLite: `INSERT ... ON CONFLICT DO NOTHING`; one writer at a time, so a second
//! delivery waits for the first transaction's write lock.

use std::time::Duration;

use sqlx::{AssertSqlSafe, SqliteConnection, SqlitePool};

use super::relay::companion;
use crate::TableName;
use crate::store::table::delete_in_batches;

impl crate::inbox::InboxSql for sqlx::Sqlite {
    async fn __inbox_insert(
        conn: &mut SqliteConnection,
        table: &TableName,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (consumer, message_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
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
        conn: &mut SqliteConnection,
        table: &TableName,
    ) -> Result<(), sqlx::Error> {
        let name = table.parts().1;
        // `processed_at` in Unix milliseconds: purging compares numbers.
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 consumer     TEXT    NOT NULL,
                 message_id   TEXT    NOT NULL,
                 processed_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
                 PRIMARY KEY (consumer, message_id)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS {index} ON \"{name}\" (processed_at);",
            table.quoted('"'),
            index = companion(table, "_processed_idx"),
        );
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
        Ok(())
    }

    /// Deletes the entries older than `older_than`, `batch` per statement.
    async fn __inbox_purge(
        pool: &SqlitePool,
        table: &TableName,
        older_than: Duration,
        batch: i64,
    ) -> Result<u64, sqlx::Error> {
        let older_than_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let quoted = table.quoted('"');
        let sql = format!(
            "DELETE FROM {quoted} WHERE (consumer, message_id) IN (SELECT consumer, message_id FROM {quoted} \
             WHERE processed_at < CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - ? LIMIT ?)"
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
    /// partition, holding the next offset to apply; `updated_at` in Unix milliseconds.
    async fn __offsets_migrate(
        conn: &mut SqliteConnection,
        table: &TableName,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 consumer_group TEXT    NOT NULL,
                 topic          TEXT    NOT NULL,
                 partition_id   INTEGER NOT NULL,
                 next_offset    INTEGER NOT NULL,
                 updated_at     INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
                 PRIMARY KEY (consumer_group, topic, partition_id)
             ) WITHOUT ROWID",
            table.quoted('"')
        );
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
        Ok(())
    }

    /// The stored next offset of each partition of `topic` for `group`.
    async fn __offsets_load(
        conn: &mut SqliteConnection,
        table: &TableName,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(i32, i64)>, sqlx::Error> {
        let sql = format!(
            "SELECT partition_id, next_offset FROM {} WHERE consumer_group = ? AND topic = ? \
             ORDER BY partition_id",
            table.quoted('"')
        );
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(group)
            .bind(topic)
            .fetch_all(conn)
            .await
    }

    /// Moves the partition's next offset to `next` unless it is past `offset` already; true when
    /// moved. SQLite has one writer at a time: a concurrent advance waits for this transaction.
    async fn __offsets_advance(
        conn: &mut SqliteConnection,
        table: &TableName,
        (group, topic, partition): (&str, &str, i32),
        offset: i64,
        next: i64,
    ) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (consumer_group, topic, partition_id, next_offset) VALUES (?1, ?2, ?3, ?5) \
             ON CONFLICT (consumer_group, topic, partition_id) DO UPDATE \
             SET next_offset = excluded.next_offset, \
                 updated_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) \
             WHERE next_offset <= ?4",
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
