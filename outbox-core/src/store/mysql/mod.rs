//! MySQL 8 and MariaDB 10.6+: `JSON` payload, auto-increment `seq` primary key and one index
//! for the relay, UTC microsecond timestamps.

mod admin;
mod inbox;
mod relay;

use sqlx::{AssertSqlSafe, MySql, MySqlConnection, MySqlPool};

pub use self::relay::{MySqlClaim, MySqlSource};
use crate::connection::{NewRow, outbox_connection};
use crate::relay::source::SourceConfig;
use crate::store::TableSource;
use crate::{Dialect, Outbox, TableName};

outbox_connection!(MySqlConnection => MySql);

impl crate::store::sealed::Sealed for MySql {}

impl Dialect for MySql {
    type Source = MySqlSource;

    async fn __insert(
        conn: &mut MySqlConnection,
        outbox: &Outbox,
        row: &NewRow,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES (?, ?, ?, ?, ?, ?)",
            outbox.table().quoted('`')
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
                dead_at        DATETIME(6)  NULL
            ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            table.quoted('`')
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
        // The index behind per-aggregate order, added to tables created without it. MySQL has
        // no `CREATE INDEX IF NOT EXISTS`; a concurrent migration that added it first is fine.
        let index = relay::aggregate_index(table);
        let (schema, name) = table.parts();
        let present: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.statistics \
             WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? AND index_name = ?",
        )
        .bind(schema)
        .bind(name)
        .bind(&index)
        .fetch_one(&mut *conn)
        .await?;
        if present == 0 {
            let sql = format!(
                "ALTER TABLE {} ADD INDEX `{index}` (aggregate_type, aggregate_id, seq)",
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
        Ok(())
    }

    fn __source(pool: MySqlPool, config: &SourceConfig) -> MySqlSource {
        TableSource::new(pool, config)
    }

    forward_to_modules!(MySqlPool, MySqlConnection);
}
