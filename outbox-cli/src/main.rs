//! `outbox`: run the relay as its own service, migrate, inspect, and handle dead letters.
//!
//! ```text
//! outbox --config relay.toml migrate
//! outbox --config relay.toml relay          # until SIGINT or SIGTERM
//! outbox --database-url postgres://… status --json
//! outbox --database-url postgres://… dead-letters list
//! outbox --database-url postgres://… dead-letters replay --all --yes
//! outbox --config relay.toml audit --read BANK --json
//! ```
//!
//! Settings come from the configuration file, then `OUTBOX_*` environment variables, then
//! flags, each overriding the one before. Errors are one line on stderr and a non-zero exit
//! status: 2 for a configuration to fix, 1 for anything else.

mod cli;
mod commands;
mod config;
mod db;
mod error;
mod http;
mod settings;
mod shutdown;
mod sink;
mod telemetry;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::db::Db;
pub(crate) use crate::error::CliError;
use crate::settings::settings;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The library's warnings (retries, dead letters, reconnections) on stderr, not the clients'
    // own chatter; `OUTBOX_LOG` replaces the filter, e.g. `OUTBOX_LOG=outbox=debug,lapin=info`.
    // The library and this command are both the `outbox` target. Colours only on a terminal,
    // so that a log file or journal gets plain text.
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("outbox=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("outbox: error: cannot start the runtime: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("outbox: error: {error}");
            std::process::ExitCode::from(error.exit_code())
        }
    }
}

/// Connects to the database and runs the command.
async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Changefeed {
        listen,
        sink_url,
        secret,
    } = &cli.command
    {
        // The changefeed brings the rows, into the receiver's own database.
        let config = settings::config(&cli)?;
        let options = commands::changefeed::Options {
            listen: listen.clone(),
            sink_url: sink_url.clone(),
            secret: secret.clone(),
        };
        return commands::changefeed::run(&config, options).await;
    }
    if let Command::ChangefeedSql {
        receiver_url,
        ca_cert,
        secret,
        show_secret,
        execute,
    } = &cli.command
    {
        // Printing needs no database; running does.
        let config = settings::config(&cli)?;
        let outbox = settings::outbox(&cli, &config)?;
        let execute = match *execute {
            false => None,
            true => Some(
                cli.database_url
                    .clone()
                    .or_else(|| config.database_url.clone())
                    .ok_or_else(|| {
                        CliError::Config(
                            "--execute needs the CockroachDB cluster: --database-url, \
                             OUTBOX_DATABASE_URL or `database_url`"
                                .into(),
                        )
                    })?,
            ),
        };
        let options = commands::changefeed_sql::Options {
            receiver_url: receiver_url.clone(),
            ca_cert: ca_cert.clone(),
            secret: secret.clone(),
            show_secret: *show_secret,
            execute,
        };
        return commands::changefeed_sql::run(&config, &outbox, options).await;
    }
    let settings = settings(&cli)?;
    // The relay's connections carry its instance id, for `outbox status`.
    let instance = match &cli.command {
        Command::Relay { instance_id, .. } => Some(
            instance_id
                .clone()
                .or_else(|| settings.config.instance_id.clone())
                .unwrap_or_else(|| format!("relay-{}", std::process::id())),
        ),
        _ => None,
    };
    let application = instance
        .as_ref()
        .map(|instance| format!("{}{instance}", outbox::admin::RELAY_APPLICATION_PREFIX));
    let db = Db::connect_as(&settings.database_url, application.as_deref()).await?;
    let outbox = &settings.outbox;
    match cli.command {
        Command::Migrate {
            inbox_table,
            no_inbox,
        } => commands::migrate::run(&db, outbox, inbox_table.as_deref(), no_inbox).await,
        Command::Relay {
            batch_size,
            listen,
            sink_url,
            webhook_secret,
            ..
        } => {
            let options = commands::relay::Options {
                batch_size,
                listen,
                sink_url,
                webhook_secret,
                instance: instance.unwrap_or_default(),
            };
            commands::relay::run(&settings, db, options).await
        }
        Command::Status { json } => {
            let tables = settings.config.relay.tables.as_ref();
            commands::status::run(&db, outbox, tables, json).await
        }
        Command::Cancel { ids } => commands::cancel::run(&db, outbox, &ids).await,
        Command::DeadLetters(command) => commands::dead_letters::run(&db, outbox, command).await,
        Command::Tail { json, from_start } => {
            commands::tail::run(&db, outbox, json, from_start).await
        }
        Command::Audit(audit) => {
            commands::audit::run(&db, outbox, settings.config.sink.as_ref(), &audit).await
        }
        Command::Changefeed { .. } | Command::ChangefeedSql { .. } => {
            unreachable!("handled above")
        }
    }
}
