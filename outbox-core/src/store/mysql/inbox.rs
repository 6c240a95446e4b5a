//! The inbox on MySQL / MariaDB: `INSERT IGNORE` on the primary key. The key's length was
//! checked before (at most 255 bytes), so `IGNORE` can only skip a duplicate. The key's columns
//! are binary strings, compared byte for byte: under a text collation MariaDB's `utf8mb4_bin`
//! (and MySQL's) pads with spaces, so `msg-1 ` would be skipped as a duplicate of `msg-1`.

use std::time::Duration;

use sqlx::{AssertSqlSafe, MySqlConnection, MySqlPool};

use crate::TableName;
use crate::store::table::delete_in_batches;

impl crate::inbox::InboxSql for sqlx::MySql {
    async fn __inbox_insert(
        conn: &mut MySqlConnection,
        table: &TableName,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "INSERT IGNORE INTO {} (consumer, message_id, processed_at) VALUES (?, ?, UTC_TIMESTAMP(6))",
            table.quoted('`')
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(consumer)
            .bind(message_id)
            .execute(conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn __inbox_migrate(
        conn: &mut MySqlConnection,
        table: &TableName,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 consumer     VARBINARY(255) NOT NULL,
                 message_id   VARBINARY(255) NOT NULL,
                 processed_at DATETIME(6)    NOT NULL,
                 PRIMARY KEY (consumer, message_id),
                 INDEX processed_idx (processed_at)
             ) ENGINE = InnoDB",
            table.quoted('`')
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
        // Tables an earlier migration keyed on text: made binary, keeping every entry (a
        // space-padded collation held no two keys that differ in trailing spaces).
        let (schema, name) = table.parts();
        let text_keys: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = COALESCE(?, DATABASE()) \
             AND table_name = ? AND column_name IN ('consumer', 'message_id') AND data_type <> 'varbinary'",
        )
        .bind(schema)
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
        if text_keys > 0 {
            let sql = format!(
                "ALTER TABLE {} MODIFY consumer VARBINARY(255) NOT NULL, MODIFY message_id VARBINARY(255) NOT NULL",
                table.quoted('`')
            );
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Deletes the entries older than `older_than`, `batch` per statement.
    async fn __inbox_purge(
        pool: &MySqlPool,
        table: &TableName,
        older_than: Duration,
        batch: i64,
    ) -> Result<u64, sqlx::Error> {
        let older_than_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let sql = format!(
            "DELETE FROM {} WHERE processed_at < UTC_TIMESTAMP(6) - INTERVAL ? * 1000 MICROSECOND \
             LIMIT ?",
            table.quoted('`')
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
    /// partition, holding the next offset to apply. Binary keys, as the inbox's.
    async fn __offsets_migrate(
        conn: &mut MySqlConnection,
        table: &TableName,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 consumer_group VARBINARY(255) NOT NULL,
                 topic          VARBINARY(255) NOT NULL,
                 partition_id   INT            NOT NULL,
                 next_offset    BIGINT         NOT NULL,
                 updated_at     DATETIME(6)    NOT NULL,
                 PRIMARY KEY (consumer_group, topic, partition_id)
             ) ENGINE = InnoDB",
            table.quoted('`')
        );
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
        Ok(())
    }

    /// The stored next offset of each partition of `topic` for `group`.
    async fn __offsets_load(
        conn: &mut MySqlConnection,
        table: &TableName,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(i32, i64)>, sqlx::Error> {
        let sql = format!(
            "SELECT partition_id, next_offset FROM {} WHERE consumer_group = ? AND topic = ? \
             ORDER BY partition_id",
            table.quoted('`')
        );
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(group)
            .bind(topic)
            .fetch_all(conn)
            .await
    }

    /// Moves the partition's next offset to `next` unless it is past `offset` already; true when
    /// moved. MySQL's affected-row count cannot tell an insert from an upsert that changed nothing
    /// (sqlx asks for found rows), so: make sure the row exists, lock it, compare, update.
    async fn __offsets_advance(
        conn: &mut MySqlConnection,
        table: &TableName,
        (group, topic, partition): (&str, &str, i32),
        offset: i64,
        next: i64,
    ) -> Result<bool, sqlx::Error> {
        let quoted = table.quoted('`');
        let ensure = format!(
            "INSERT INTO {quoted} (consumer_group, topic, partition_id, next_offset, updated_at) \
             VALUES (?, ?, ?, 0, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE next_offset = next_offset"
        );
        sqlx::query(AssertSqlSafe(ensure))
            .bind(group)
            .bind(topic)
            .bind(partition)
            .execute(&mut *conn)
            .await?;
        let read = format!(
            "SELECT next_offset FROM {quoted} WHERE consumer_group = ? AND topic = ? AND partition_id = ? \
             FOR UPDATE"
        );
        let stored: i64 = sqlx::query_scalar(AssertSqlSafe(read))
            .bind(group)
            .bind(topic)
            .bind(partition)
            .fetch_one(&mut *conn)
            .await?;
        if stored > offset {
            return Ok(false);
        }
        let update = format!(
            "UPDATE {quoted} SET next_offset = ?, updated_at = UTC_TIMESTAMP(6) \
             WHERE consumer_group = ? AND topic = ? AND partition_id = ?"
        );
        sqlx::query(AssertSqlSafe(update))
            .bind(next)
            .bind(group)
            .bind(topic)
            .bind(partition)
            .execute(&mut *conn)
            .await?;
        Ok(true)
    }
}
