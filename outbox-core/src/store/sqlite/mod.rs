//! SQLite: JSON text payload, `INTEGER PRIMARY KEY AUTOINCREMENT` so that `seq` is never
//! reused after a delete, ISO-8601 UTC timestamps.

mod admin;
mod inbox;
mod journal;
mod relay;
mod staging;

use sqlx::{AssertSqlSafe, Sqlite, SqliteConnection};

pub use self::relay::{SqliteClaim, SqliteSource};
use crate::outbox::RecordingSql;
use crate::outbox::connection::{NewRow, outbox_connection};
use crate::{Dialect, Outbox, TableName};

outbox_connection!(SqliteConnection => Sqlite);

impl crate::sealed::Sealed for Sqlite {}

impl Dialect for Sqlite {}

impl RecordingSql for Sqlite {
    async fn __insert(
        conn: &mut SqliteConnection,
        outbox: &Outbox,
        row: &NewRow,
    ) -> Result<(), sqlx::Error> {
        let table = outbox.table().quoted('"');
        let sql = match row.due {
            None => format!(
                "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            // A delayed event: due that long after now, or at an instant (2440587.5 is the
            // Unix epoch as a Julian day number, which strftime takes).
            Some(_) => format!(
                "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers, available_at, scheduled) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, strftime('%Y-%m-%dT%H:%M:%fZ', \
                   CASE WHEN ?8 THEN julianday('now') ELSE 2440587.5 END + ?7 / 86400000000.0), 1)"
            ),
        };
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(row.id.hyphenated().to_string())
            .bind(&row.aggregate_type)
            .bind(&row.aggregate_id)
            .bind(&row.event_type)
            .bind(&row.payload)
            .bind(&row.headers);
        if let Some(due) = row.due {
            query = query.bind(due.micros).bind(due.from_now);
        }
        query.execute(conn).await?;
        Ok(())
    }

    async fn __cancel(
        conn: &mut SqliteConnection,
        table: &TableName,
        id: uuid::Uuid,
    ) -> Result<bool, sqlx::Error> {
        let sql = crate::store::table::cancel_statement(&table.quoted('"'), "?1");
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(id.hyphenated().to_string())
            .execute(conn)
            .await?;
        Ok(done.rows_affected() > 0)
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
                dead_at        TEXT,
                scheduled      INTEGER NOT NULL DEFAULT 0
            )",
            table.quoted('"')
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
        // Delayed events (`scheduled`), on tables created before them.
        let has_column: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM pragma_table_info('{}') WHERE name = 'scheduled'",
            table.parts().1
        )))
        .fetch_one(&mut *conn)
        .await?;
        if has_column == 0 {
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 0",
                table.quoted('"')
            );
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await?;
        }
        let ddl = format!(
            "{}\n{}",
            relay::relay_ddl(table),
            journal::journal_ddl(table)
        );
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}
