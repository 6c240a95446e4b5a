//! SQLite: JSON text payload, `INTEGER PRIMARY KEY AUTOINCREMENT` so that `seq` is never
//! reused after a delete, ISO-8601 UTC timestamps.

mod inbox;
pub(crate) mod relay;

use sqlx::{AssertSqlSafe, Connection, SqliteConnection};

use crate::connection::{NewRow, OutboxConnection, sealed::Sealed};
use crate::{Outbox, TableName};

impl Sealed for SqliteConnection {}

impl OutboxConnection for SqliteConnection {
    const DIALECT: &'static str = "SQLite";

    fn __in_transaction(&self) -> bool {
        self.is_in_transaction()
    }

    async fn __insert(&mut self, table: &TableName, row: &NewRow) -> Result<(), sqlx::Error> {
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
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    inbox_methods!();

    async fn __migrate(&mut self, outbox: &Outbox) -> Result<(), sqlx::Error> {
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
            .execute(&mut *self)
            .await?;
        sqlx::raw_sql(AssertSqlSafe(relay::relay_ddl(table)))
            .execute(&mut *self)
            .await?;
        Ok(())
    }
}
