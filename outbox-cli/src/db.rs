//! The database behind a URL, whichever dialect it is. The queries are the library's.

use std::time::Duration;

use outbox::Outbox;
use outbox::sinks::redacted;
use sqlx::{MySqlPool, PgPool, SqlitePool};

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
        with_pool!(self, pool => outbox.check(pool).await).map_err(|error| {
            CliError::Database(format!(
                "outbox table `{}` is not usable ({error}); create it with `outbox migrate`",
                outbox.table()
            ))
        })
    }
}
