//! PostgreSQL: `jsonb` payload, identity `seq` primary key, a `NOTIFY` trigger for the relay.

mod admin;
mod inbox;
mod relay;

use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres};

pub use self::relay::{PgClaim, PgSource};
use crate::admin::{EventCounts, RelayInstance};
use crate::connection::{NewRow, outbox_connection};
use crate::message::{DeadLetter, DeadLetterFilter, Message};
use crate::relay::source::SourceConfig;
use crate::store::TableSource;
use crate::{Dialect, Outbox, TableName};

outbox_connection!(PgConnection => Postgres);

impl crate::store::sealed::Sealed for Postgres {}

impl Dialect for Postgres {
    type Source = PgSource;

    async fn __insert(
        conn: &mut PgConnection,
        table: &TableName,
        row: &NewRow,
    ) -> Result<(), sqlx::Error> {
        // The payload travels as text and is parsed into jsonb by the server, once.
        let sql = format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)",
            table.quoted('"')
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(row.id)
            .bind(&row.aggregate_type)
            .bind(&row.aggregate_id)
            .bind(&row.event_type)
            .bind(&row.payload)
            .bind(&row.headers)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn __migrate(conn: &mut PgConnection, outbox: &Outbox) -> Result<(), sqlx::Error> {
        let table = outbox.table();
        let mut tx = conn.begin().await?;
        // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide in the catalog: serialize
        // migrations of one table on an advisory lock held until commit.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("outbox migrate {table}"))
            .execute(&mut *tx)
            .await?;
        if let (Some(schema), _) = table.parts() {
            let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id             UUID        NOT NULL,
                aggregate_type TEXT        NOT NULL,
                aggregate_id   TEXT        NOT NULL,
                event_type     TEXT        NOT NULL,
                payload        JSONB       NOT NULL,
                headers        JSONB,
                created_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                available_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                attempts       INTEGER     NOT NULL DEFAULT 0,
                last_error     TEXT,
                published_at   TIMESTAMPTZ,
                dead_at        TIMESTAMPTZ
            )",
            table.quoted('"')
        );
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
        sqlx::raw_sql(AssertSqlSafe(relay::relay_ddl(
            table,
            outbox.notifies_on_commit(),
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn __inbox_insert(
        conn: &mut PgConnection,
        table: &TableName,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, sqlx::Error> {
        inbox::insert(conn, table, consumer, message_id).await
    }

    async fn __inbox_migrate(
        conn: &mut PgConnection,
        table: &TableName,
    ) -> Result<(), sqlx::Error> {
        inbox::migrate(conn, table).await
    }

    async fn __inbox_purge(
        pool: &PgPool,
        table: &TableName,
        older_than: Duration,
        batch: i64,
    ) -> Result<u64, sqlx::Error> {
        inbox::purge(pool, table, older_than, batch).await
    }

    fn __source(pool: PgPool, config: &SourceConfig) -> PgSource {
        TableSource::new(pool, config)
    }

    async fn __dead_letters(
        pool: &PgPool,
        table: &TableName,
        filter: &DeadLetterFilter,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, sqlx::Error> {
        admin::dead_letters(pool, table, filter, limit).await
    }

    async fn __count_dead_letters(
        pool: &PgPool,
        table: &TableName,
        filter: &DeadLetterFilter,
    ) -> Result<u64, sqlx::Error> {
        admin::count_dead_letters(pool, table, filter).await
    }

    async fn __purge_dead_letters(
        pool: &PgPool,
        table: &TableName,
        filter: &DeadLetterFilter,
    ) -> Result<u64, sqlx::Error> {
        admin::purge_dead_letters(pool, table, filter).await
    }

    async fn __replay(
        pool: &PgPool,
        table: &TableName,
        ids: Option<&[uuid::Uuid]>,
    ) -> Result<u64, sqlx::Error> {
        admin::replay(pool, table, ids).await
    }

    async fn __status(pool: &PgPool, table: &TableName) -> Result<Vec<EventCounts>, sqlx::Error> {
        admin::status(pool, table).await
    }

    async fn __relays(
        pool: &PgPool,
        _table: &TableName,
    ) -> Result<Option<Vec<RelayInstance>>, sqlx::Error> {
        admin::relays(pool).await.map(Some)
    }

    async fn __last_seq(pool: &PgPool, table: &TableName) -> Result<i64, sqlx::Error> {
        admin::last_seq(pool, table).await
    }

    async fn __events_after(
        pool: &PgPool,
        table: &TableName,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Message>, sqlx::Error> {
        admin::events_after(pool, table, after, limit).await
    }
}
