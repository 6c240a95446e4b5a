//! One relay for many outboxes: a table per tenant, or per schema, all served by one relay
//! with fair turns, and the tables found again while it runs.
//!
//! ```
//! # #[cfg(feature = "postgres")]
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), outbox::Error> {
//! use outbox::relay::many::Outboxes;
//! use outbox::relay::{ChannelSink, Relay};
//!
//! let (sink, _published) = ChannelSink::new(1024);
//! // Every `outbox` table of a schema whose name starts with `tenant_`, found at start-up and
//! // again every 10 seconds (a tenant created meanwhile is served from then on).
//! let tenants = Outboxes::matching(pool, "tenant_*.outbox")?;
//! let relay = Relay::builder(tenants, sink).build();
//! # let _ = relay;
//! # Ok(()) }
//! ```
//!
//! Turns are fair: each claim goes to the next table in turn that has events, so that between
//! two batches of a busy tenant every other tenant with events gets one — a tenant with a
//! backlog delays another by at most one batch per tenant with work, never by its backlog.
//! Each table keeps all its guarantees (per-aggregate order, retries, dead letters): each is
//! claimed as a relay of its own would. The metrics carry each batch's table as their `table`
//! label (`outbox_lag_seconds` too, per table); several relays may serve the same tables.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::source::{Claim, Settlement, Source, SourceConfig};
use super::{IntoSource, Message};
use crate::relay::source::RelaySql;
use crate::{Error, TableName};

/// Which tables a relay serves: given by name, or found by a pattern. Give it to
/// [`Relay::builder`](super::Relay::builder) in place of a pool.
#[derive(Debug, Clone)]
pub struct Outboxes<DB: RelaySql> {
    pool: sqlx::Pool<DB>,
    selection: Selection,
    refresh: Duration,
}

#[derive(Debug, Clone)]
enum Selection {
    Tables(Vec<TableName>),
    /// `LIKE` patterns: the schema (`None`: the current one) and the table.
    Matching {
        pattern: String,
        schema: Option<String>,
        name: String,
    },
}

impl<DB: RelaySql> Outboxes<DB> {
    /// How often the tables are looked for again (default 10 s).
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);

    /// These tables, and no others.
    pub fn tables(pool: sqlx::Pool<DB>, tables: impl IntoIterator<Item = TableName>) -> Self {
        let mut tables: Vec<TableName> = tables.into_iter().collect();
        tables.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        tables.dedup();
        Outboxes {
            pool,
            selection: Selection::Tables(tables),
            refresh: Self::DEFAULT_REFRESH,
        }
    }

    /// Every outbox table whose name matches `pattern`: `table` or `schema.table`, where `*`
    /// stands for any run of characters (`tenant_*.outbox`, `outbox_*`, `*.outbox`). An
    /// unqualified pattern looks in the connection's current schema (PostgreSQL), database
    /// (MySQL) or file (SQLite). A table is an outbox table when it has the outbox's columns.
    pub fn matching(pool: sqlx::Pool<DB>, pattern: &str) -> Result<Self, Error> {
        let invalid = |reason: &'static str| Error::InvalidTableName {
            name: pattern.to_owned(),
            reason,
        };
        let like = |part: &str| -> Result<String, Error> {
            if part.is_empty() {
                return Err(invalid("a part of the pattern is empty"));
            }
            if !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*')
            {
                return Err(invalid(
                    "a pattern holds letters, digits, `_`, `*` and at most one `.`",
                ));
            }
            Ok(part.replace('_', "\\_").replace('*', "%"))
        };
        let (schema, name) = match pattern.split_once('.') {
            Some((schema, name)) => (Some(like(schema)?), like(name)?),
            None => (None, like(pattern)?),
        };
        Ok(Outboxes {
            pool,
            selection: Selection::Matching {
                pattern: pattern.to_owned(),
                schema,
                name,
            },
            refresh: Self::DEFAULT_REFRESH,
        })
    }

    /// Looks for the tables again this often.
    pub fn refresh_every(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_millis(100));
        self
    }

    /// The tables served now: the list, or what the pattern finds.
    pub async fn discover(&self) -> Result<Vec<TableName>, Error> {
        match &self.selection {
            Selection::Tables(tables) => Ok(tables.clone()),
            Selection::Matching {
                pattern,
                schema,
                name,
            } => {
                let found = DB::__discover(&self.pool, schema.as_deref(), name)
                    .await
                    .map_err(|source| Error::Database {
                        operation: "find the outbox tables",
                        table: pattern.clone(),
                        dialect: DB::NAME,
                        source,
                    })?;
                Ok(found
                    .into_iter()
                    .filter_map(|(schema, table)| {
                        let name = match schema {
                            Some(schema) => format!("{schema}.{table}"),
                            None => table,
                        };
                        TableName::new(name.clone())
                            .inspect_err(|error| {
                                tracing::warn!(%error, table = %name, "outbox table not served: its name is not a plain identifier");
                            })
                            .ok()
                    })
                    .collect())
            }
        }
    }
}

impl<DB: RelaySql> IntoSource for Outboxes<DB> {
    type Source = ManySource<DB>;

    fn __into_source(self, config: &SourceConfig) -> ManySource<DB> {
        ManySource {
            outboxes: self,
            config: config.clone(),
            state: Mutex::default(),
        }
    }
}

/// The tables of [`Outboxes`] as one relay [`Source`]: each claim from the next table in turn.
#[derive(Debug)]
pub struct ManySource<DB: RelaySql> {
    outboxes: Outboxes<DB>,
    config: SourceConfig,
    state: Mutex<State<DB::Source>>,
}

#[derive(Debug)]
struct State<S> {
    /// The tables served, sorted by name, each with a source of its own.
    tables: Vec<(TableName, Arc<S>)>,
    /// The table whose turn is next.
    next: usize,
    /// When the tables were last looked for.
    found_at: Option<Instant>,
}

impl<S> Default for State<S> {
    fn default() -> Self {
        State {
            tables: Vec::new(),
            next: 0,
            found_at: None,
        }
    }
}

impl<DB: RelaySql> ManySource<DB> {
    fn state(&self) -> MutexGuard<'_, State<DB::Source>> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Looks for the tables again when it is time: new ones get a source, gone ones are dropped.
    async fn refresh(&self) -> Result<(), Error> {
        let due = self
            .state()
            .found_at
            .is_none_or(|at| at.elapsed() >= self.outboxes.refresh);
        if !due {
            return Ok(());
        }
        let found = self.outboxes.discover().await?;
        let mut state = self.state();
        let mut tables = Vec::with_capacity(found.len());
        for table in found {
            let source = match state.tables.iter().find(|(name, _)| *name == table) {
                Some((_, source)) => source.clone(),
                None => {
                    tracing::info!(%table, "outbox relay: serving a new table");
                    let config = SourceConfig {
                        table: table.clone(),
                        ..self.config.clone()
                    };
                    Arc::new(DB::__source(self.outboxes.pool.clone(), &config))
                }
            };
            tables.push((table, source));
        }
        for (gone, _) in state
            .tables
            .iter()
            .filter(|(name, _)| !tables.iter().any(|(kept, _)| kept == name))
        {
            tracing::info!(table = %gone, "outbox relay: a table is gone");
        }
        state.tables = tables;
        state.found_at = Some(Instant::now());
        Ok(())
    }

    /// The tables in turn order, from the one whose turn is next.
    fn turns(&self) -> Vec<(usize, TableName, Arc<DB::Source>)> {
        let state = self.state();
        let count = state.tables.len();
        (0..count)
            .map(|k| {
                let i = (state.next + k) % count;
                let (table, source) = &state.tables[i];
                (i, table.clone(), source.clone())
            })
            .collect()
    }
}

impl<DB: RelaySql> Source for ManySource<DB> {
    type Claim = ManyClaim<<DB::Source as Source>::Claim>;

    async fn claim(&self, max: usize) -> Result<Option<Self::Claim>, Error> {
        self.refresh().await?;
        let mut first_error = None;
        for (i, table, source) in self.turns() {
            match source.claim(max).await {
                Ok(Some(claim)) => {
                    let mut state = self.state();
                    let count = state.tables.len().max(1);
                    state.next = (i + 1) % count;
                    return Ok(Some(ManyClaim { claim, table }));
                }
                Ok(None) => {}
                // One table's trouble (dropped, locked) must not stop the others.
                Err(error) => {
                    tracing::warn!(%error, %table, "outbox relay: claim failed on one table");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(None),
        }
    }

    async fn wait(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }

    async fn maintain(&self, retention: Option<Duration>) -> Result<f64, Error> {
        self.refresh().await?;
        let mut lag: f64 = 0.0;
        for (_, table, source) in self.turns() {
            match source.maintain(retention).await {
                Ok(table_lag) => {
                    metrics::gauge!("outbox_lag_seconds", "table" => table.to_string())
                        .set(table_lag);
                    lag = lag.max(table_lag);
                }
                // Nothing a retry changes (the polling relay cannot run on this server).
                Err(error @ Error::Unsupported { .. }) => return Err(error),
                Err(error) => tracing::warn!(%error, %table, "outbox maintenance failed"),
            }
        }
        Ok(lag)
    }

    async fn close(&self) {
        for (_, _, source) in self.turns() {
            source.close().await;
        }
    }
}

/// A batch of one of the tables.
#[derive(Debug)]
pub struct ManyClaim<C> {
    claim: C,
    table: TableName,
}

impl<C: Claim> Claim for ManyClaim<C> {
    fn take_messages(&mut self) -> Vec<Message> {
        self.claim.take_messages()
    }

    fn settle(
        self,
        settlement: Settlement,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        self.claim.settle(settlement)
    }

    fn in_hand(
        &mut self,
        messages: &[Message],
    ) -> impl std::future::Future<Output = Result<std::collections::HashMap<i64, u32>, Error>> + Send
    {
        self.claim.in_hand(messages)
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn patterns_become_escaped_like_patterns_and_bad_ones_are_refused() {
        let pool = sqlx::SqlitePool::connect_lazy("sqlite::memory:").unwrap();
        let outboxes = Outboxes::matching(pool.clone(), "tenant_*.outbox").unwrap();
        match outboxes.selection {
            Selection::Matching { schema, name, .. } => {
                assert_eq!(schema.as_deref(), Some("tenant\\_%"));
                assert_eq!(name, "outbox");
            }
            Selection::Tables(_) => panic!("a pattern"),
        }
        for bad in ["", "a.b.c", "tenant-1", "x;drop", ".outbox", "a."] {
            assert!(
                matches!(
                    Outboxes::matching(pool.clone(), bad),
                    Err(Error::InvalidTableName { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
