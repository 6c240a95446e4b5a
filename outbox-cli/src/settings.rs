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

pub(crate) fn settings(cli: &Cli) -> Result<Settings, CliError> {
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
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
    let table = cli
        .table
        .clone()
        .or_else(|| config.table.clone())
        .unwrap_or_else(|| "outbox".into());
    let outbox = Outbox::for_table(table_name(&table)?);
    let outbox = match config.relay.source.unwrap_or_default() {
        SourceSetting::Table => outbox,
        SourceSetting::Log => outbox.log_tailing(),
        SourceSetting::WalMessages => outbox.wal_messages(),
    };
    Ok(Settings {
        config,
        database_url,
        outbox,
    })
}
