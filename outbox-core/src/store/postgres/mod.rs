//! PostgreSQL: `jsonb` payload, identity `seq` primary key, a `NOTIFY` trigger for the relay.
//!
//! CockroachDB, which speaks PostgreSQL's protocol, goes through this dialect too: recording is
//! the same, [`migrate`](crate::Outbox::migrate) recognises it (`version()`) and creates a
//! table that suits it (see [`Outbox::row_ttl`](crate::Outbox::row_ttl)), and a changefeed
//! publishes it ([`changefeed`](crate::changefeed)): the polling relay refuses to start there.

mod admin;
mod cockroach;
mod inbox;
mod journal;
#[cfg(feature = "postgres-log")]
pub mod log;
mod relay;
mod staging;
mod wal;

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres};

#[cfg(feature = "postgres-log")]
pub use self::log::{LogClaim, LogSource, LogStream};
pub use self::relay::{PgClaim, PgSource};
use crate::outbox::RecordingSql;
use crate::outbox::connection::{NewRow, outbox_connection};
use crate::{Dialect, Outbox, TableName};

outbox_connection!(PgConnection => Postgres);

/// The server's CockroachDB version, or `None` when it is PostgreSQL.
pub async fn cockroach_version(
    pool: &PgPool,
) -> Result<Option<crate::changefeed::CockroachVersion>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    cockroach::version(&mut conn).await
}

/// What the relay checks before its first claim, for a check of your own at start-up:
/// [`Error::Unsupported`](crate::Error::Unsupported) on CockroachDB, whose outbox a changefeed
/// publishes (see [`changefeed`](crate::changefeed)).
pub async fn check_relay_support(pool: &PgPool, table: &TableName) -> Result<(), crate::Error> {
    <Postgres as crate::store::locking::RowLocking>::preflight(pool, table).await
}

/// CockroachDB: the changefeed jobs of `table` (those whose statement names it), newest first,
/// from `SHOW CHANGEFEED JOBS`, with the high-water timestamp before which every change was
/// emitted. Fails on PostgreSQL, which has no changefeeds.
pub async fn changefeed_jobs(
    pool: &PgPool,
    table: &TableName,
) -> Result<Vec<crate::changefeed::ChangefeedJob>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    cockroach::changefeed_jobs(&mut conn, table).await
}

impl crate::sealed::Sealed for Postgres {}

impl Dialect for Postgres {}

impl RecordingSql for Postgres {
    async fn __insert(
        conn: &mut PgConnection,
        outbox: &Outbox,
        row: &NewRow,
    ) -> Result<(), sqlx::Error> {
        if outbox.writes_wal_messages() {
            return wal::emit(conn, outbox, row).await;
        }
        // The payload travels as text and is parsed into jsonb by the server, once.
        let table = outbox.table().quoted('"');
        let sql = match row.due {
            None => format!(
                "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers) \
                 VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)"
            ),
            // A delayed event: due that long after now, by the server's clock, or at an instant.
            Some(_) => format!(
                "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers, available_at, scheduled) \
                 VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, \
                   CASE WHEN $8 THEN clock_timestamp() ELSE timestamptz 'epoch' END + $7 * interval '1 microsecond', true)"
            ),
        };
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(row.id)
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
        conn: &mut PgConnection,
        table: &TableName,
        id: uuid::Uuid,
    ) -> Result<bool, sqlx::Error> {
        let sql = crate::store::table::cancel_statement(&table.quoted('"'), "$1");
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .execute(conn)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn __migrate(conn: &mut PgConnection, outbox: &Outbox) -> Result<(), sqlx::Error> {
        if let Some(version) = cockroach::version(conn).await? {
            return cockroach::migrate(conn, outbox, version).await;
        }
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
                dead_at        TIMESTAMPTZ,
                scheduled      BOOLEAN     NOT NULL DEFAULT false
            )",
            table.quoted('"')
        );
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
        // Delayed events (`scheduled`): the column, on tables created before it, and the index
        // `cancel` finds them by, which holds them alone (recording others never touches it).
        let (_, name) = table.parts();
        let sql = format!(
            "ALTER TABLE {quoted} ADD COLUMN IF NOT EXISTS scheduled BOOLEAN NOT NULL DEFAULT false;
             CREATE INDEX IF NOT EXISTS \"{name}_scheduled_idx\" ON {quoted} (id) WHERE scheduled;",
            quoted = table.quoted('"')
        );
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
        // A log-tailed table needs no claim index nor trigger: the log gives the order.
        let ddl = if outbox.is_log_tailed() {
            wal::table_ddl(table)
        } else {
            relay::relay_ddl(table, outbox.notifies_on_commit())
        };
        // The relays' journal, which counts a relay's crash against the event in its hands.
        let ddl = format!("{ddl}\n{}", journal::journal_ddl(table));
        sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
        tx.commit().await
    }

    async fn __migrate_log(conn: &mut PgConnection, outbox: &Outbox) -> Result<(), crate::Error> {
        // Outside the table's transaction: a logical slot cannot be created in a transaction
        // that has written.
        wal::setup(conn, outbox).await
    }
}
