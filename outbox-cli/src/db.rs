//! The database behind a URL, whichever dialect it is, and the queries of `status`.

use std::time::Duration;

use outbox::Outbox;
use outbox::sinks::redacted;
use serde::Serialize;
use sqlx::{AssertSqlSafe, MySqlPool, PgPool, SqlitePool};

use crate::CliError;

/// A pool of one of the three dialects.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the dialect's pool.
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => $body,
            $crate::db::Db::MySql($pool) => $body,
            $crate::db::Db::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// A pool of a few connections. One connection is opened first, alone, so that an unreachable
/// server or refused credentials are reported as such, not as a pool timeout.
async fn open<DB: sqlx::Database>(url: &str) -> Result<sqlx::Pool<DB>, sqlx::Error> {
    use sqlx::Connection;
    let first = tokio::time::timeout(Duration::from_secs(10), DB::Connection::connect(url))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    first.close().await?;
    sqlx::pool::PoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(url)
}

impl Db {
    /// Connects to `url`; the error says which part to fix. On PostgreSQL the connections carry
    /// `application_name` when given, which is how `outbox status` finds the running relays.
    pub(crate) async fn connect_as(
        url: &str,
        application_name: Option<&str>,
    ) -> Result<Db, CliError> {
        // Errors show the URL as the user wrote it, without the application name added here.
        let shown = redacted(url);
        let named;
        let url = match application_name {
            Some(name) if url.starts_with("postgres") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                named = format!("{url}{separator}application_name={name}");
                named.as_str()
            }
            _ => url,
        };
        let unreachable =
            |error: sqlx::Error| CliError::Database(format!("cannot connect to {shown}: {error}"));
        let scheme = url.split("://").next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Db::Postgres(
                open::<sqlx::Postgres>(url).await.map_err(unreachable)?,
            )),
            "mysql" | "mariadb" => Ok(Db::MySql(
                open::<sqlx::MySql>(url).await.map_err(unreachable)?,
            )),
            "sqlite" => Ok(Db::Sqlite(
                open::<sqlx::Sqlite>(url).await.map_err(unreachable)?,
            )),
            _ => Err(CliError::Config(format!(
                "database URL {shown:?} is not postgres://, mysql:// or sqlite://"
            ))),
        }
    }

    /// Fails with a clear message when the outbox table is not there.
    pub(crate) async fn check_table(&self, outbox: &Outbox) -> Result<(), CliError> {
        let sql = match self {
            Db::MySql(_) => format!(
                "SELECT COUNT(*) FROM {} WHERE 1 = 0",
                outbox.table().quoted('`')
            ),
            _ => format!(
                "SELECT COUNT(*) FROM {} WHERE 1 = 0",
                outbox.table().quoted('"')
            ),
        };
        let found = with_pool!(self, pool => sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await.map(drop));
        found.map_err(|error| {
            CliError::Database(format!(
                "outbox table `{}` is not usable ({error}); create it with `outbox migrate`",
                outbox.table()
            ))
        })
    }

    /// Counts per aggregate and event type.
    pub(crate) async fn status(&self, outbox: &Outbox) -> Result<Vec<StatusRow>, CliError> {
        let table = outbox.table();
        let (double, back) = (outbox.table().quoted('"'), outbox.table().quoted('`'));
        let pending = "published_at IS NULL AND dead_at IS NULL";
        let rows: Result<Vec<RawStatus>, sqlx::Error> = match self {
            Db::Postgres(pool) => {
                let sql = format!(
                    "SELECT aggregate_type, event_type,
                            COUNT(*) FILTER (WHERE {pending}),
                            COUNT(*) FILTER (WHERE dead_at IS NOT NULL),
                            COUNT(*) FILTER (WHERE published_at IS NOT NULL),
                            EXTRACT(EPOCH FROM clock_timestamp() - MIN(created_at) FILTER (WHERE {pending}))::float8
                     FROM {double} GROUP BY 1, 2 ORDER BY 1, 2"
                );
                sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await
            }
            Db::MySql(pool) => {
                let sql = format!(
                    "SELECT aggregate_type, event_type,
                            CAST(SUM({pending}) AS SIGNED),
                            CAST(SUM(dead_at IS NOT NULL) AS SIGNED),
                            CAST(SUM(published_at IS NOT NULL) AS SIGNED),
                            CAST(TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN {pending} THEN created_at END), UTC_TIMESTAMP(6)) / 1e6 AS DOUBLE)
                     FROM {back} GROUP BY 1, 2 ORDER BY 1, 2"
                );
                sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await
            }
            Db::Sqlite(pool) => {
                let sql = format!(
                    "SELECT aggregate_type, event_type,
                            SUM({pending}), SUM(dead_at IS NOT NULL), SUM(published_at IS NOT NULL),
                            (julianday('now') - julianday(MIN(CASE WHEN {pending} THEN created_at END))) * 86400.0
                     FROM {double} GROUP BY 1, 2 ORDER BY 1, 2"
                );
                sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await
            }
        };
        let rows = rows.map_err(|error| {
            CliError::Database(format!("cannot read outbox table `{table}`: {error}"))
        })?;
        Ok(rows
            .into_iter()
            .map(
                |(aggregate_type, event_type, pending, dead, published, age)| StatusRow {
                    aggregate_type,
                    event_type,
                    pending,
                    dead,
                    published,
                    oldest_pending_secs: age.map(|age| age.max(0.0)),
                },
            )
            .collect())
    }
}

/// The prefix of a relay's PostgreSQL `application_name`.
pub(crate) const RELAY_APPLICATION: &str = "outbox-relay:";

/// A relay that `status` can see.
#[derive(Debug, Serialize)]
pub(crate) struct RelayInstance {
    /// Its instance id.
    pub(crate) instance: String,
    /// Where it connects from, or its role.
    pub(crate) detail: String,
}

impl Db {
    /// The relays at work on this database: PostgreSQL connections named by `outbox relay`, or
    /// the holder of the SQLite lease. `None` where the database cannot tell (MySQL).
    pub(crate) async fn relays(
        &self,
        outbox: &Outbox,
    ) -> Result<Option<Vec<RelayInstance>>, CliError> {
        let found: Result<Vec<(String, String)>, sqlx::Error> = match self {
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT substr(application_name, length($1) + 1), \
                            COALESCE(host(client_addr), 'local') || ', ' || COUNT(*) || ' connections' \
                     FROM pg_stat_activity WHERE application_name LIKE $1 || '%' \
                       AND datname = current_database() \
                     GROUP BY application_name, client_addr ORDER BY 1",
                )
                .bind(RELAY_APPLICATION)
                .fetch_all(pool)
                .await
            }
            Db::Sqlite(pool) => {
                let lease = match outbox.table().parts() {
                    (Some(schema), name) => format!("\"{schema}\".\"{name}_lease\""),
                    (None, name) => format!("\"{name}_lease\""),
                };
                let sql = format!(
                    "SELECT holder, 'holds the lease' FROM {lease} \
                     WHERE expires_at > CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
                );
                sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await
            }
            Db::MySql(_) => return Ok(None),
        };
        let rows = found
            .map_err(|error| CliError::Database(format!("cannot list the relays: {error}")))?;
        Ok(Some(
            rows.into_iter()
                .map(|(instance, detail)| RelayInstance { instance, detail })
                .collect(),
        ))
    }
}

/// One recorded event, as `outbox tail` prints it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct TailRow {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) event_type: String,
    pub(crate) payload: String,
}

impl Db {
    /// The highest `seq` in the table (0 when empty).
    pub(crate) async fn last_seq(&self, outbox: &Outbox) -> Result<i64, CliError> {
        let found: Result<i64, sqlx::Error> = match self {
            Db::Postgres(pool) => {
                let sql = format!(
                    "SELECT COALESCE(MAX(seq), 0)::bigint FROM {}",
                    outbox.table().quoted('"')
                );
                sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await
            }
            Db::MySql(pool) => {
                let sql = format!(
                    "SELECT CAST(COALESCE(MAX(seq), 0) AS SIGNED) FROM {}",
                    outbox.table().quoted('`')
                );
                sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await
            }
            Db::Sqlite(pool) => {
                let sql = format!(
                    "SELECT COALESCE(MAX(seq), 0) FROM {}",
                    outbox.table().quoted('"')
                );
                sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await
            }
        };
        found.map_err(|error| {
            CliError::Database(format!("cannot read `{}`: {error}", outbox.table()))
        })
    }

    /// Events recorded after `after`, in `seq` order, at most `limit`.
    pub(crate) async fn recorded_after(
        &self,
        outbox: &Outbox,
        after: i64,
        limit: i64,
    ) -> Result<Vec<TailRow>, CliError> {
        let rows: Result<Vec<TailRow>, sqlx::Error> = match self {
            Db::Postgres(pool) => {
                let sql = format!(
                    "SELECT seq, id::text AS id, aggregate_type, aggregate_id, event_type, payload::text AS payload \
                     FROM {} WHERE seq > $1 ORDER BY seq LIMIT $2",
                    outbox.table().quoted('"')
                );
                sqlx::query_as(AssertSqlSafe(sql))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
            Db::MySql(pool) => {
                let sql = format!(
                    "SELECT CAST(seq AS SIGNED) AS seq, id, aggregate_type, aggregate_id, event_type, \
                     CAST(payload AS CHAR) AS payload FROM {} WHERE seq > ? ORDER BY seq LIMIT ?",
                    outbox.table().quoted('`')
                );
                sqlx::query_as(AssertSqlSafe(sql))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
            Db::Sqlite(pool) => {
                let sql = format!(
                    "SELECT seq, id, aggregate_type, aggregate_id, event_type, payload \
                     FROM {} WHERE seq > ? ORDER BY seq LIMIT ?",
                    outbox.table().quoted('"')
                );
                sqlx::query_as(AssertSqlSafe(sql))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
        };
        rows.map_err(|error| {
            CliError::Database(format!("cannot read `{}`: {error}", outbox.table()))
        })
    }

    /// Deletes the dead letters (of `event_type` only, when given); how many.
    pub(crate) async fn purge_dead(
        &self,
        outbox: &Outbox,
        event_type: Option<&str>,
    ) -> Result<u64, CliError> {
        let (table, placeholder) = match self {
            Db::Postgres(_) => (outbox.table().quoted('"'), "$1"),
            Db::MySql(_) => (outbox.table().quoted('`'), "?"),
            Db::Sqlite(_) => (outbox.table().quoted('"'), "?"),
        };
        let filter = match event_type {
            Some(_) => format!(" AND event_type = {placeholder}"),
            None => String::new(),
        };
        let sql = format!("DELETE FROM {table} WHERE dead_at IS NOT NULL{filter}");
        let done = with_pool!(self, pool => {
            let query = sqlx::query(AssertSqlSafe(sql));
            let query = match event_type {
                Some(event_type) => query.bind(event_type),
                None => query,
            };
            query.execute(pool).await.map(|done| done.rows_affected())
        });
        done.map_err(|error| {
            CliError::Database(format!("cannot purge `{}`: {error}", outbox.table()))
        })
    }
}

/// A status row as the query returns it: aggregate type, event type, pending, dead, kept,
/// age of the oldest pending event in seconds.
type RawStatus = (String, String, i64, i64, i64, Option<f64>);

/// One line of `outbox status`.
#[derive(Debug, Serialize)]
pub(crate) struct StatusRow {
    pub(crate) aggregate_type: String,
    pub(crate) event_type: String,
    pub(crate) pending: i64,
    pub(crate) dead: i64,
    /// Published and kept (retention mode).
    pub(crate) published: i64,
    /// Age of the oldest pending event: the relay's lag.
    pub(crate) oldest_pending_secs: Option<f64>,
}
