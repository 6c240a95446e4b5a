//! SQLite: JSON text payload, `INTEGER PRIMARY KEY AUTOINCREMENT` so that `seq` is never
//! reused after a delete, ISO-8601 UTC timestamps.

mod admin;
mod inbox;
mod relay;

use std::time::Duration;

use sqlx::{AssertSqlSafe, Sqlite, SqliteConnection, SqlitePool};

pub use self::relay::{SqliteClaim, SqliteSource};
use crate::admin::{EventCounts, RelayInstance};
use crate::connection::{NewRow, outbox_connection};
use crate::message::{DeadLetter, DeadLetterFilter, Message};
use crate::relay::source::SourceConfig;
use crate::{Dialect, Outbox, TableName};

outbox_connection!(SqliteConnection => Sqlite);

impl crate::store::sealed::Sealed for Sqlite {}

impl Dialect for Sqlite {
    type Source = SqliteSource;

    async fn __insert(
        conn: &mut SqliteConnection,
        table: &TableName,
        row: &NewRow,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES (?, ?, ?, ?, ?, ?)",
            table.quoted('"')
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(row.id.hyphenated().to_string())
            .bind(&row.aggregate_type)
            .bind(&row.aggregate_id)
            .bind(&row.event_type)
            .bind(&row.payload)
            .bind(&row.headers)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn __migrate(conn: &mut SqliteConnection, outbox: &Outbox) -> Result<(), sqlx::Error> {
        let table = outbox.table();
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                seq            INTEGER PRIMARY KEY AUTOINCREMENT,
                id             TEXT    NOT NULL,
                aggregate_type TEXT    NOT NULL,
                aggregate_id   TEXT    NOT NULL,
                event_type     TEXT    NOT NULL,
                payload        TEXT    NOT NULL,
                headers        TEXT,
                created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                available_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                attempts       INTEGER NOT NULL DEFAULT 0,
                last_error     TEXT,
                published_at   TEXT,
                dead_at        TEXT
            )",
            table.quoted('"')
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
        sqlx::raw_sql(AssertSqlSafe(relay::relay_ddl(table)))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn __inbox_insert(
        conn: &mut SqliteConnection,
        table: &TableName,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, sqlx::Error> {
        inbox::insert(conn, table, consumer, message_id).await
    }

    async fn __inbox_migrate(
        conn: &mut SqliteConnection,
        table: &TableName,
    ) -> Result<(), sqlx::Error> {
        inbox::migrate(conn, table).await
    }

    async fn __inbox_purge(
        pool: &SqlitePool,
        table: &TableName,
        older_than: Duration,
        batch: i64,
    ) -> Result<u64, sqlx::Error> {
        inbox::purge(pool, table, older_than, batch).await
    }

    fn __source(pool: SqlitePool, config: &SourceConfig) -> SqliteSource {
        SqliteSource::new(pool, config)
    }

    async fn __dead_letters(
        pool: &SqlitePool,
        table: &TableName,
        filter: &DeadLetterFilter,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, sqlx::Error> {
        admin::dead_letters(pool, table, filter, limit).await
    }

    async fn __count_dead_letters(
        pool: &SqlitePool,
        table: &TableName,
        filter: &DeadLetterFilter,
    ) -> Result<u64, sqlx::Error> {
        admin::count_dead_letters(pool, table, filter).await
    }

    async fn __purge_dead_letters(
        pool: &SqlitePool,
        table: &TableName,
        filter: &DeadLetterFilter,
    ) -> Result<u64, sqlx::Error> {
        admin::purge_dead_letters(pool, table, filter).await
    }

    async fn __replay(
        pool: &SqlitePool,
        table: &TableName,
        ids: Option<&[uuid::Uuid]>,
    ) -> Result<u64, sqlx::Error> {
        admin::replay(pool, table, ids).await
    }

    async fn __status(
        pool: &SqlitePool,
        table: &TableName,
    ) -> Result<Vec<EventCounts>, sqlx::Error> {
        admin::status(pool, table).await
    }

    async fn __relays(
        pool: &SqlitePool,
        table: &TableName,
    ) -> Result<Option<Vec<RelayInstance>>, sqlx::Error> {
        admin::relays(pool, table).await.map(Some)
    }

    async fn __last_seq(pool: &SqlitePool, table: &TableName) -> Result<i64, sqlx::Error> {
        admin::last_seq(pool, table).await
    }

    async fn __events_after(
        pool: &SqlitePool,
        table: &TableName,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Message>, sqlx::Error> {
        admin::events_after(pool, table, after, limit).await
    }
}
