//! MySQL 8 and MariaDB 10.6+: `JSON` payload, auto-increment `seq` primary key and one index
//! for the relay, UTC microsecond timestamps.

mod admin;
mod inbox;
mod journal;
mod relay;
mod staging;

use sqlx::{AssertSqlSafe, MySql, MySqlConnection};

pub use self::relay::{MySqlClaim, MySqlSource};
use crate::outbox::RecordingSql;
use crate::outbox::connection::{NewRow, outbox_connection};
use crate::{Dialect, Outbox, TableName};

outbox_connection!(MySqlConnection => MySql);

impl crate::sealed::Sealed for MySql {}

impl Dialect for MySql {}

impl RecordingSql for MySql {
    async fn __insert(
        conn: &mut MySqlConnection,
        outbox: &Outbox,
        row: &NewRow,
    ) -> Result<(), sqlx::Error> {
        let table = outbox.table().quoted('`');
        let sql = match row.due {
            None => format!(
                "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            ),
            // A delayed event: due that long after now (UTC, as the table's timestamps), or at
            // an instant.
            Some(_) => format!(
                "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers, available_at, scheduled) \
                 VALUES (?, ?, ?, ?, ?, ?, \
                   TIMESTAMPADD(MICROSECOND, ?, IF(?, UTC_TIMESTAMP(6), TIMESTAMP('1970-01-01 00:00:00'))), true)"
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
        conn: &mut MySqlConnection,
        table: &TableName,
        id: uuid::Uuid,
    ) -> Result<bool, sqlx::Error> {
        let sql = crate::store::table::cancel_statement(&table.quoted('`'), "?");
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(id.hyphenated().to_string())
            .execute(conn)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn __migrate(conn: &mut MySqlConnection, outbox: &Outbox) -> Result<(), sqlx::Error> {
        let table = outbox.table();
        // DDL commits implicitly in MySQL, and `CREATE TABLE IF NOT EXISTS` is atomic under
        // the metadata lock, so concurrent migrations need no extra lock.
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                seq            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                id             CHAR(36) CHARACTER SET ascii NOT NULL,
                aggregate_type VARCHAR(255) NOT NULL,
                aggregate_id   VARCHAR(255) NOT NULL,
                event_type     VARCHAR(255) NOT NULL,
                payload        JSON         NOT NULL,
                headers        JSON         NULL,
                created_at     DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
                available_at   DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
                attempts       INT          NOT NULL DEFAULT 0,
                last_error     TEXT         NULL,
                published_at   DATETIME(6)  NULL,
                dead_at        DATETIME(6)  NULL,
                scheduled      BOOLEAN      NOT NULL DEFAULT false
            ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            table.quoted('`')
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
        // Delayed events (`scheduled`), on tables created before them: MySQL 8 has no
        // `ADD COLUMN IF NOT EXISTS`; a concurrent migration that added it first is fine.
        let (schema, name) = table.parts();
        let has_column: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.columns \
             WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? AND column_name = 'scheduled'",
        )
        .bind(schema)
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
        if has_column == 0 {
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN scheduled BOOLEAN NOT NULL DEFAULT false",
                table.quoted('`')
            );
            match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
                Err(sqlx::Error::Database(error))
                    if error
                        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                        .is_some_and(|error| error.number() == 1060) =>
                {
                    // ER_DUP_FIELDNAME: another migration added it meanwhile.
                }
                other => {
                    other?;
                }
            }
        }
        // The index behind per-aggregate order, and the one `cancel` finds an event by, added
        // to tables created without them. MySQL has no `CREATE INDEX IF NOT EXISTS`; a
        // concurrent migration that added one first is fine. (No partial indexes here: every
        // event has its entry in the second.)
        for (index, columns) in [
            (
                relay::aggregate_index(table),
                "aggregate_type, aggregate_id, seq",
            ),
            (format!("{name}_id_idx"), "id"),
        ] {
            let present: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.statistics \
                 WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? AND index_name = ?",
            )
            .bind(schema)
            .bind(name)
            .bind(&index)
            .fetch_one(&mut *conn)
            .await?;
            if present > 0 {
                continue;
            }
            let sql = format!(
                "ALTER TABLE {} ADD INDEX `{index}` ({columns})",
                table.quoted('`')
            );
            match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
                Err(sqlx::Error::Database(error))
                    if error
                        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                        .is_some_and(|error| error.number() == 1061) =>
                {
                    // ER_DUP_KEYNAME: another migration added it meanwhile.
                }
                other => {
                    other?;
                }
            }
        }
        // The relays' journal, which counts a relay's crash against the event in its hands.
        sqlx::raw_sql(AssertSqlSafe(journal::journal_ddl(table)))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}
