//! `outbox changefeed-sql`: the statements that point a CockroachDB changefeed of the outbox
//! table at `outbox changefeed` and set the table's row-level TTL, printed, or run with
//! `--execute`.

use std::path::PathBuf;

use outbox::Outbox;
use outbox::changefeed::Setup;
use outbox::sinks::redacted;

use crate::CliError;
use crate::config::Config;
use crate::db::Db;

/// The flags of `outbox changefeed-sql`.
pub(crate) struct Options {
    pub(crate) receiver_url: Option<String>,
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) secret: Option<String>,
    pub(crate) show_secret: bool,
    /// Run them on this database instead of printing them.
    pub(crate) execute: Option<String>,
}

/// Prints the statements, or runs them on the CockroachDB of `options.execute`.
pub(crate) async fn run(
    config: &Config,
    outbox: &Outbox,
    options: Options,
) -> Result<(), CliError> {
    let settings = &config.changefeed;
    let url = options
        .receiver_url
        .or_else(|| settings.public_url.clone())
        .ok_or_else(|| {
            CliError::Config(
                "no receiver URL: set changefeed.public_url (or --receiver-url) to the \
                 https:// address CockroachDB's nodes reach `outbox changefeed` at"
                    .into(),
            )
        })?;
    let mut setup = Setup::new(outbox.table().clone(), url)
        .map_err(|error| CliError::Config(error.to_string()))?
        .ttl(outbox.row_ttl_value());
    if let Some(secret) = options.secret.or_else(|| settings.secret.clone()) {
        setup = setup.secret(secret);
    }
    if let Some(bytes) = settings.max_body_bytes {
        setup = setup
            .max_body_bytes(bytes, Outbox::DEFAULT_MAX_PAYLOAD_BYTES)
            .map_err(|error| CliError::Config(format!("changefeed.max_body_bytes: {error}")))?;
    }
    if let Some(path) = &options.ca_cert {
        let pem = std::fs::read(path)
            .map_err(|error| CliError::Config(format!("--ca-cert {}: {error}", path.display())))?;
        if !pem.starts_with(b"-----BEGIN") {
            return Err(CliError::Config(format!(
                "--ca-cert {}: not a PEM certificate",
                path.display()
            )));
        }
        setup = setup.ca_cert(&pem);
    }
    let Some(database_url) = options.execute else {
        let statements = if options.show_secret {
            setup.statements()
        } else {
            setup.redacted_statements()
        };
        for statement in statements {
            println!("{statement};\n");
        }
        return Ok(());
    };
    let Db::Postgres(pool) = Db::connect_as(&database_url, None).await? else {
        return Err(CliError::Config(
            "changefeeds are CockroachDB's: give a postgresql:// URL of a CockroachDB cluster"
                .into(),
        ));
    };
    let database = |error: sqlx::Error| CliError::Database(error.to_string());
    let Some(version) = outbox::store::postgres::cockroach_version(&pool)
        .await
        .map_err(database)?
    else {
        return Err(CliError::Config(format!(
            "{} is PostgreSQL, not CockroachDB: it has no changefeeds; publish with \
             `outbox relay` (relay.source = \"table\" or \"log\")",
            redacted(&database_url)
        )));
    };
    let setup = setup.version(version);
    let (statements, shown) = (setup.statements(), setup.redacted_statements());
    for (statement, shown) in statements.iter().zip(&shown) {
        use sqlx::Row;
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .fetch_all(&pool)
            .await
            .map_err(|error| CliError::Database(format!("{shown}\n  failed: {error}")))?;
        println!("{shown};");
        if let Some(row) = rows.first()
            && shown.starts_with("CREATE CHANGEFEED")
        {
            let job: i64 = row.try_get(0).map_err(database)?;
            println!("-- changefeed job {job} created");
        }
    }
    Ok(())
}
