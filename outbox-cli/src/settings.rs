//! The settings of a run: the configuration file, then the environment and flags over it.

use outbox::{Outbox, TableName};

use crate::CliError;
use crate::cli::Cli;
use crate::config::{Config, SourceSetting};

/// The file's settings with the environment and flags over them.
pub(crate) struct Settings {
    pub(crate) config: Config,
    pub(crate) database_url: String,
    pub(crate) outbox: Outbox,
}

pub(crate) fn table_name(name: &str) -> Result<TableName, CliError> {
    TableName::new(name).map_err(|error| CliError::Config(error.to_string()))
}

/// The configuration file, or the defaults without one.
pub(crate) fn config(cli: &Cli) -> Result<Config, CliError> {
    match &cli.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    }
}

pub(crate) fn settings(cli: &Cli) -> Result<Settings, CliError> {
    let config = config(cli)?;
    let database_url = cli
        .database_url
        .clone()
        .or_else(|| config.database_url.clone())
        .ok_or_else(|| {
            CliError::Config(
                "no database URL: set `database_url` in the configuration file, \
                 OUTBOX_DATABASE_URL, or --database-url"
                    .into(),
            )
        })?;
    let outbox = outbox(cli, &config)?;
    Ok(Settings {
        config,
        database_url,
        outbox,
    })
}

/// The outbox the flags and the file describe: its table, its source, its row TTL.
pub(crate) fn outbox(cli: &Cli, config: &Config) -> Result<Outbox, CliError> {
    let table = cli
        .table
        .clone()
        .or_else(|| config.table.clone())
        .unwrap_or_else(|| "outbox".into());
    let mut outbox = Outbox::for_table(table_name(&table)?);
    if let Some(ttl) = config.changefeed.row_ttl {
        if ttl.as_secs() == 0 {
            return Err(CliError::Config(
                "changefeed.row_ttl must be at least one second".into(),
            ));
        }
        outbox = outbox.row_ttl(ttl);
    }
    let outbox = match config.relay.source.unwrap_or_default() {
        SourceSetting::Table => outbox,
        SourceSetting::Log => outbox.log_tailing(),
        SourceSetting::WalMessages => outbox.wal_messages(),
    };
    Ok(outbox)
}
