//! CockroachDB through the `postgres` dialect: it speaks PostgreSQL's protocol, and recording
//! is the same `INSERT`; the table suits it, and a changefeed replaces the polling relay.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::changefeed::{CockroachVersion, ttl_parameters};
use crate::{Error, Outbox, TableName};

/// CockroachDB's version when the server is CockroachDB, `None` for PostgreSQL.
pub(crate) async fn version(
    conn: &mut PgConnection,
) -> Result<Option<CockroachVersion>, sqlx::Error> {
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(conn)
        .await?;
    Ok(CockroachVersion::detect(&version))
}

/// What the polling relay answers on CockroachDB, at start-up: it claims with `FOR UPDATE SKIP
/// LOCKED` over an identity `seq` and a partial index that CockroachDB's table does not have,
/// and a changefeed reads committed rows without any of that.
pub(crate) fn relay_unsupported() -> Error {
    Error::Unsupported {
        feature: "the polling relay",
        dialect: "CockroachDB",
        hint: "publish with a changefeed instead: `outbox changefeed-sql` prints the CREATE \
               CHANGEFEED statement, and `outbox changefeed` (or `outbox::changefeed::Receiver`) \
               receives it and forwards every row to the sink",
    }
}

/// The outbox table on CockroachDB: keyed by the event's id in a hash-sharded primary key (ids
/// are UUIDv7, time-ordered: a plain key would send every insert to the range holding the end
/// of the table), `seq` from `unique_rowid()` (no sequence to contend on), no claim columns, no
/// trigger, and row-level TTL instead of the relay's purge.
pub(crate) fn table_ddl(outbox: &Outbox, version: CockroachVersion) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
    id             UUID        NOT NULL,
    seq            INT8        NOT NULL DEFAULT unique_rowid(),
    aggregate_type TEXT        NOT NULL,
    aggregate_id   TEXT        NOT NULL,
    event_type     TEXT        NOT NULL,
    payload        JSONB       NOT NULL,
    headers        JSONB,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id) USING HASH
) WITH ({})",
        outbox.table().quoted('"'),
        ttl_parameters(outbox.row_ttl_value(), version)
    )
}

/// Creates the table (and its schema) if it does not exist.
pub(crate) async fn migrate(
    conn: &mut PgConnection,
    outbox: &Outbox,
    version: CockroachVersion,
) -> Result<(), sqlx::Error> {
    if outbox.is_log_tailed() || outbox.notifies_on_commit() {
        return Err(sqlx::Error::Configuration(
            "CockroachDB has neither PostgreSQL's logical replication nor LISTEN/NOTIFY: \
             leave `log_tailing`, `wal_messages` and `notify_on_commit` off, and publish with \
             a changefeed (`outbox changefeed-sql`)"
                .into(),
        ));
    }
    let mut tx = conn.begin().await?;
    if let (Some(schema), _) = outbox.table().parts() {
        let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    sqlx::raw_sql(AssertSqlSafe(table_ddl(outbox, version)))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The changefeed jobs of `table`, as `SHOW CHANGEFEED JOBS` lists them.
pub(crate) async fn changefeed_jobs(
    conn: &mut PgConnection,
    table: &TableName,
) -> Result<Vec<crate::changefeed::ChangefeedJob>, sqlx::Error> {
    let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT job_id::STRING, status, high_water_timestamp::STRING, description \
         FROM [SHOW CHANGEFEED JOBS] ORDER BY created DESC",
    )
    .fetch_all(conn)
    .await?;
    let (_, name) = table.parts();
    Ok(rows
        .into_iter()
        .filter(|(_, _, _, description)| description.contains(name))
        .map(
            |(id, status, high_water, description)| crate::changefeed::ChangefeedJob {
                id,
                status,
                high_water: high_water.and_then(|text| crate::changefeed::Hlc::parse(&text).ok()),
                description,
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Checked against CockroachDB's documentation (v24.1): `CREATE TABLE IF NOT EXISTS`, the
    /// types (`UUID`, `INT8`, `TEXT` — an alias of `STRING` —, `JSONB`, `TIMESTAMPTZ`),
    /// `unique_rowid()`, a hash-sharded primary key `PRIMARY KEY (…) USING HASH` (default bucket
    /// count), and the row-level TTL storage parameters in `WITH (…)`.
    #[test]
    fn the_cockroach_table_is_hash_sharded_and_expires_its_rows() {
        let outbox =
            Outbox::for_table(TableName::from_static("outbox")).row_ttl(Duration::from_secs(7200));
        let ddl = table_ddl(
            &outbox,
            CockroachVersion {
                major: 24,
                minor: 1,
            },
        );
        assert_eq!(
            ddl,
            "CREATE TABLE IF NOT EXISTS \"outbox\" (
    id             UUID        NOT NULL,
    seq            INT8        NOT NULL DEFAULT unique_rowid(),
    aggregate_type TEXT        NOT NULL,
    aggregate_id   TEXT        NOT NULL,
    event_type     TEXT        NOT NULL,
    payload        JSONB       NOT NULL,
    headers        JSONB,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id) USING HASH
) WITH (ttl_expiration_expression = '((created_at AT TIME ZONE ''UTC'') + INTERVAL ''7200 seconds'') AT TIME ZONE ''UTC''', ttl_job_cron = '@hourly', ttl_disable_changefeed_replication = true)"
        );
    }
}
