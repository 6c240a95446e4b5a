//! MySQL 8 and MariaDB 10.6+: `JSON` payload, auto-increment `seq` as the only index on the
//! write path, UTC microsecond timestamps.

use sqlx::{AssertSqlSafe, Connection, MySqlConnection};

use crate::connection::{NewRow, OutboxConnection, sealed::Sealed};
use crate::{Outbox, TableName};

impl Sealed for MySqlConnection {}

impl OutboxConnection for MySqlConnection {
    const DIALECT: &'static str = "MySQL";

    fn __in_transaction(&self) -> bool {
        self.is_in_transaction()
    }

    async fn __insert(&mut self, table: &TableName, row: &NewRow) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload) \
             VALUES (?, ?, ?, ?, ?)",
            table.quoted('`')
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(row.id.hyphenated().to_string())
            .bind(&row.aggregate_type)
            .bind(&row.aggregate_id)
            .bind(&row.event_type)
            .bind(&row.payload)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn __migrate(&mut self, outbox: &Outbox) -> Result<(), sqlx::Error> {
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
            .execute(&mut *self)
            .await?;
        Ok(())
    }
}
