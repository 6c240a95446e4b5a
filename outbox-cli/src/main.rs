//! `outbox`: run the relay as its own service, migrate, inspect, and handle dead letters.
//!
//! ```text
//! outbox --config relay.toml migrate
//! outbox --config relay.toml relay          # until SIGINT or SIGTERM
//! outbox --database-url postgres://… status --json
//! outbox --database-url postgres://… dead-letters list
//! outbox --database-url postgres://… dead-letters replay --all --yes
//! ```
//!
//! Settings come from the configuration file, then `OUTBOX_*` environment variables, then
//! flags, each overriding the one before. Errors are one line on stderr and a non-zero exit
//! status: 2 for a configuration to fix, 1 for anything else.

mod config;
mod db;
mod relay;
mod sink;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use outbox::inbox::Inbox;
use outbox::relay::DeadLetterFilter;
use outbox::{Outbox, TableName};

use crate::config::Config;
use crate::db::{Db, with_pool};

/// What went wrong, said in one line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The configuration must change.
    #[error("{0}")]
    Config(String),
    /// The database is unreachable or refused an operation.
    #[error("{0}")]
    Database(String),
    /// The sink could not be set up: refused credentials, a missing capability.
    #[error("{0}")]
    Sink(String),
    /// The sink's broker or receiver did not answer: `outbox relay` waits for it.
    #[error("{0}")]
    SinkUnreachable(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Parser)]
#[command(
    name = "outbox",
    version,
    about = "Transactional outbox relay, migrations, status and dead letters"
)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, short, env = "OUTBOX_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The database: postgres://…, mysql://… or sqlite://….
    #[arg(
        long,
        env = "OUTBOX_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// The outbox table (default `outbox`).
    #[arg(long, env = "OUTBOX_TABLE", global = true)]
    table: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates or upgrades the outbox table, and the inbox table.
    Migrate {
        /// The inbox table (default `inbox`).
        #[arg(long, env = "OUTBOX_INBOX_TABLE")]
        inbox_table: Option<String>,
        /// Leave the inbox table out.
        #[arg(long)]
        no_inbox: bool,
    },
    /// Relays events to the configured sink until SIGINT or SIGTERM.
    ///
    /// Each event is removed from the outbox only once the sink confirmed it; a failed delivery
    /// is retried with backoff, and after `relay.max_attempts` the event becomes a dead letter,
    /// kept until `outbox dead-letters replay`.
    ///
    /// A sink whose broker or receiver is unreachable at start-up is waited for: the relay
    /// starts, `/health` answers 503, and the connection is tried again with backoff. Bad
    /// settings and refused credentials stop the command at once.
    ///
    /// RabbitMQ: events are published `mandatory`, so an event that no queue is bound to
    /// receive is returned by the broker, retried, then dead-lettered with the broker's reason
    /// (`312 NO_ROUTE`) — never dropped unseen. For a fire-and-forget exchange, set
    /// `mandatory = false` in the [sink] section.
    Relay {
        /// Events per batch.
        #[arg(long, env = "OUTBOX_BATCH_SIZE")]
        batch_size: Option<usize>,
        /// Where `/metrics` and `/health` are served.
        #[arg(long, env = "OUTBOX_LISTEN")]
        listen: Option<String>,
        /// The broker URL, overriding `sink.url`.
        #[arg(long, env = "OUTBOX_SINK_URL", hide_env_values = true)]
        sink_url: Option<String>,
        /// The webhook sink's signing secret.
        #[arg(long, env = "OUTBOX_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
        /// This relay's name in logs and metrics.
        #[arg(long, env = "OUTBOX_INSTANCE_ID")]
        instance_id: Option<String>,
    },
    /// Pending events, lag, dead letters and kept events, per aggregate and event type.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lists, shows, replays or purges the events that ran out of attempts.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// Prints events as they are recorded, until interrupted.
    Tail {
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// Start with the events already in the table.
        #[arg(long)]
        from_start: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetters {
    /// Lists dead letters, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        filter: Filter,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows one dead letter in full.
    Show {
        /// Its event id.
        id: uuid::Uuid,
    },
    /// Deletes dead letters for good.
    Purge {
        /// Only this event type.
        #[arg(long)]
        event_type: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Makes dead letters deliverable again, in batches, with progress on large sets.
    Replay {
        /// The event ids to replay.
        ids: Vec<uuid::Uuid>,
        /// Replay every dead letter (that the filters select).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        filter: Filter,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters a command applies to.
#[derive(Debug, clap::Args)]
struct Filter {
    /// Only this event type.
    #[arg(long)]
    event_type: Option<String>,
    /// Only this aggregate type.
    #[arg(long)]
    aggregate_type: Option<String>,
    /// Only this aggregate.
    #[arg(long)]
    aggregate_id: Option<String>,
    /// Only those dead for at least this many seconds.
    #[arg(long, value_name = "SECONDS")]
    older_than: Option<u64>,
}

impl Filter {
    /// The library's filter, applied by the database.
    fn to_query(&self) -> DeadLetterFilter {
        let mut filter = DeadLetterFilter::new();
        if let Some(event_type) = &self.event_type {
            filter = filter.event_type(event_type);
        }
        if let Some(aggregate_type) = &self.aggregate_type {
            filter = filter.aggregate_type(aggregate_type);
        }
        if let Some(aggregate_id) = &self.aggregate_id {
            filter = filter.aggregate_id(aggregate_id);
        }
        if let Some(secs) = self.older_than {
            filter = filter.dead_for_at_least(Duration::from_secs(secs));
        }
        filter
    }

    fn is_empty(&self) -> bool {
        self.to_query() == DeadLetterFilter::new()
    }
}

/// Dead letters replayed per statement.
const REPLAY_BATCH: usize = 500;

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
            std::process::ExitCode::from(match error {
                CliError::Config(_) => 2,
                _ => 1,
            })
        }
    }
}

/// The file's settings with the environment and flags over them.
pub(crate) struct Settings {
    pub(crate) config: Config,
    pub(crate) database_url: String,
    pub(crate) outbox: Outbox,
}

fn table_name(name: &str) -> Result<TableName, CliError> {
    TableName::new(name).map_err(|error| CliError::Config(error.to_string()))
}

fn settings(cli: &Cli) -> Result<Settings, CliError> {
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
    Ok(Settings {
        config,
        database_url,
        outbox,
    })
}

async fn run(cli: Cli) -> Result<(), CliError> {
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
        .map(|instance| format!("{}{instance}", db::RELAY_APPLICATION));
    let db = Db::connect_as(&settings.database_url, application.as_deref()).await?;
    let outbox = &settings.outbox;
    match cli.command {
        Command::Migrate {
            inbox_table,
            no_inbox,
        } => {
            let migrated = with_pool!(&db, pool => outbox.migrate(pool).await);
            migrated.map_err(|error| CliError::Database(error.to_string()))?;
            println!("outbox table `{}` is ready", outbox.table());
            if !no_inbox {
                let inbox =
                    Inbox::for_table(table_name(inbox_table.as_deref().unwrap_or("inbox"))?);
                let migrated = with_pool!(&db, pool => inbox.migrate(pool).await);
                migrated.map_err(|error| CliError::Database(error.to_string()))?;
                println!("inbox table `{}` is ready", inbox.table());
            }
            Ok(())
        }
        Command::Relay {
            batch_size,
            listen,
            sink_url,
            webhook_secret,
            ..
        } => {
            db.check_table(outbox).await?;
            let options = relay::Options {
                batch_size,
                listen,
                sink_url,
                webhook_secret,
                instance: instance.unwrap_or_default(),
            };
            relay::run(&settings, db, options).await
        }
        Command::Status { json } => {
            db.check_table(outbox).await?;
            let rows = db.status(outbox).await?;
            let relays = db.relays(outbox).await?;
            print_status(&rows, relays.as_deref(), json)
        }
        Command::DeadLetters(command) => {
            db.check_table(outbox).await?;
            dead_letters(&db, outbox, command).await
        }
        Command::Tail { json, from_start } => {
            db.check_table(outbox).await?;
            tail(&db, outbox, json, from_start).await
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    eprintln!("outbox: stopping");
}

fn print_status(
    rows: &[db::StatusRow],
    relays: Option<&[db::RelayInstance]>,
    json: bool,
) -> Result<(), CliError> {
    if json {
        let status = serde_json::json!({ "events": rows, "relays": relays });
        let text = serde_json::to_string_pretty(&status)
            .map_err(|error| CliError::Other(error.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "{:<20} {:<28} {:>9} {:>6} {:>9} {:>12}",
        "aggregate_type", "event_type", "pending", "dead", "kept", "oldest (s)"
    );
    for row in rows {
        let age = row
            .oldest_pending_secs
            .map(|age| format!("{age:.1}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<28} {:>9} {:>6} {:>9} {:>12}",
            row.aggregate_type, row.event_type, row.pending, row.dead, row.published, age
        );
    }
    let (pending, dead): (i64, i64) = rows
        .iter()
        .fold((0, 0), |(p, d), row| (p + row.pending, d + row.dead));
    println!("total: {pending} pending, {dead} dead");
    // Relays share the work by row locks (or, on SQLite, take turns under a lease): there are
    // no partitions to show, only who is at work.
    match relays {
        None => println!("relays: not visible on MySQL/MariaDB"),
        Some([]) => println!("relays: none running"),
        Some(relays) => {
            for relay in relays {
                println!("relay {}: {}", relay.instance, relay.detail);
            }
        }
    }
    Ok(())
}

async fn dead_letters(db: &Db, outbox: &Outbox, command: DeadLetters) -> Result<(), CliError> {
    let database = |error: outbox::Error| CliError::Database(error.to_string());
    match command {
        DeadLetters::List {
            limit,
            filter,
            json,
        } => {
            let query = filter.to_query();
            let letters =
                with_pool!(db, pool => outbox.dead_letters_where(pool, &query, limit).await)
                    .map_err(database)?;
            for letter in letters {
                let message = &letter.message;
                if json {
                    let line = serde_json::json!({
                        "id": message.id.to_string(),
                        "aggregate_type": message.aggregate_type,
                        "aggregate_id": message.aggregate_id,
                        "event_type": message.event_type,
                        "attempts": message.attempts,
                        "last_error": letter.last_error,
                        "dead_for_secs": letter.dead_for.as_secs_f64(),
                        "payload": serde_json::from_str::<serde_json::Value>(&message.payload)
                            .unwrap_or_else(|_| message.payload.clone().into()),
                    });
                    println!("{line}");
                } else {
                    println!(
                        "{}  {} {} {}  attempts {}  {}",
                        message.id,
                        message.aggregate_type,
                        message.aggregate_id,
                        message.event_type,
                        message.attempts,
                        letter.last_error
                    );
                }
            }
            Ok(())
        }
        DeadLetters::Replay {
            ids,
            all,
            filter,
            yes,
        } => {
            if ids.is_empty() && !all {
                return Err(CliError::Config(
                    "name the dead letters to replay by id, or pass --all".into(),
                ));
            }
            let query = filter.to_query();
            let total = if all {
                with_pool!(db, pool => outbox.count_dead_letters(pool, &query).await)
                    .map_err(database)?
            } else {
                ids.len() as u64
            };
            let what = match (all, filter.is_empty()) {
                (true, true) => format!("every dead letter ({total})"),
                (true, false) => format!("the {total} dead letters selected"),
                (false, _) => format!("{total} dead letters"),
            };
            if !yes && !confirm(&format!("replay {what} of `{}`?", outbox.table())) {
                return Err(CliError::Other("nothing replayed".into()));
            }
            let progress = total > REPLAY_BATCH as u64;
            let mut replayed = 0;
            if all {
                // Each round selects the next batch in the database; a replayed event is no
                // longer dead, so the next round starts after it.
                loop {
                    let batch = with_pool!(db, pool => outbox.dead_letters_where(pool, &query, REPLAY_BATCH).await)
                        .map_err(database)?;
                    let batch: Vec<uuid::Uuid> =
                        batch.into_iter().map(|letter| letter.message.id).collect();
                    let done = match batch.as_slice() {
                        [] => 0,
                        ids => with_pool!(db, pool => outbox.replay_dead_letters(pool, ids).await)
                            .map_err(database)?,
                    };
                    replayed += done;
                    if progress {
                        eprint!("\rreplayed {replayed} of {total}");
                    }
                    if done == 0 {
                        break;
                    }
                }
            } else {
                for batch in ids.chunks(REPLAY_BATCH) {
                    replayed +=
                        with_pool!(db, pool => outbox.replay_dead_letters(pool, batch).await)
                            .map_err(database)?;
                    if progress {
                        eprint!("\rreplayed {replayed} of {total}");
                    }
                }
            }
            if progress {
                eprintln!();
            }
            println!("{replayed} dead letters replayed");
            Ok(())
        }
        DeadLetters::Show { id } => {
            let query = DeadLetterFilter::new().id(id);
            let letters = with_pool!(db, pool => outbox.dead_letters_where(pool, &query, 1).await)
                .map_err(database)?;
            let letter = letters.into_iter().next().ok_or_else(|| {
                CliError::Other(format!("no dead letter {id} in `{}`", outbox.table()))
            })?;
            let message = &letter.message;
            let shown = serde_json::json!({
                "id": message.id.to_string(),
                "seq": message.seq,
                "aggregate_type": message.aggregate_type,
                "aggregate_id": message.aggregate_id,
                "event_type": message.event_type,
                "attempts": message.attempts,
                "last_error": letter.last_error,
                "headers": message.headers.as_deref().and_then(|h| serde_json::from_str::<serde_json::Value>(h).ok()),
                "payload": serde_json::from_str::<serde_json::Value>(&message.payload)
                    .unwrap_or_else(|_| message.payload.clone().into()),
            });
            let text = serde_json::to_string_pretty(&shown)
                .map_err(|error| CliError::Other(error.to_string()))?;
            println!("{text}");
            Ok(())
        }
        DeadLetters::Purge { event_type, yes } => {
            let what = match &event_type {
                Some(event_type) => format!("the `{event_type}` dead letters"),
                None => "every dead letter".to_owned(),
            };
            if !yes && !confirm(&format!("delete {what} of `{}` for good?", outbox.table())) {
                return Err(CliError::Other("nothing deleted".into()));
            }
            let purged = db.purge_dead(outbox, event_type.as_deref()).await?;
            println!("{purged} dead letters deleted");
            Ok(())
        }
    }
}

/// Asks `question` on stderr; true for a yes on stdin.
fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

/// Follows the table: prints what was recorded since the last poll, every 100 ms. Events the
/// relay publishes and deletes between two polls are not seen: with `retention_secs` set, the
/// relay keeps them and nothing is missed.
async fn tail(db: &Db, outbox: &Outbox, json: bool, from_start: bool) -> Result<(), CliError> {
    let mut last = if from_start {
        0
    } else {
        db.last_seq(outbox).await?
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let rows = db.recorded_after(outbox, last, 1_000).await?;
        for row in &rows {
            if json {
                let line =
                    serde_json::to_string(row).map_err(|e| CliError::Other(e.to_string()))?;
                println!("{line}");
            } else {
                println!(
                    "{:>8}  {}  {} {}  {}  {}",
                    row.seq,
                    row.id,
                    row.aggregate_type,
                    row.aggregate_id,
                    row.event_type,
                    row.payload
                );
            }
            last = row.seq;
        }
        let _ = std::io::stdout().flush();
        if rows.len() < 1_000 {
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}
