//! SQLite: JSON text payload, `INTEGER PRIMARY KEY AUTOINCREMENT` so that `seq` is never
//! reused after a delete, ISO-8601 UTC timestamps.

mod admin;
mod inbox;
mod relay;

use sqlx::{AssertSqlSafe, Sqlite, SqliteConnection, SqlitePool};

pub use self::relay::{SqliteClaim, SqliteSource};
use crate::connection::{NewRow, outbox_connection};
use crate::relay::source::SourceConfig;
use crate::{Dialect, Outbox, TableName};

outbox_connection!(SqliteConnection => Sqlite);

impl crate::store::sealed::Sealed for Sqlite {}

impl Dialect for Sqlite {
    type Source = SqliteSource;

    async fn __insert(
        conn: &mut SqliteConnection,
        outbox: &Outbox,
        row: &NewRow,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES (?, ?, ?, ?, ?, ?)",
            outbox.table().quoted('"')
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

    fn __source(pool: SqlitePool, config: &SourceConfig) -> SqliteSource {
        SqliteSource::new(pool, config)
    }

    forward_to_modules!(SqlitePool, SqliteConnection);
}
