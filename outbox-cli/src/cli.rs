//! The command line: clap's types, nothing else.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use outbox::relay::DeadLetterFilter;

/// `outbox`'s arguments.
#[derive(Debug, Parser)]
#[command(
    name = "outbox",
    version,
    about = "Transactional outbox relay, migrations, status and dead letters"
)]
pub(crate) struct Cli {
    /// The TOML configuration file.
    #[arg(long, short, env = "OUTBOX_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// The database: postgres://…, mysql://… or sqlite://….
    #[arg(
        long,
        env = "OUTBOX_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub(crate) database_url: Option<String>,
    /// The outbox table (default `outbox`).
    #[arg(long, env = "OUTBOX_TABLE", global = true)]
    pub(crate) table: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// `mandatory = false` in the `[sink]` section.
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
        /// The webhook sink's signing secret, a Standard Webhooks secret (`whsec_` and base64).
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
    /// Cancels delayed events (recorded with `deliver_after`) that are not published yet.
    ///
    /// Prints each id cancelled; exits 1 when some could not be (published already, dead, or
    /// not a delayed event of this outbox).
    Cancel {
        /// The event ids.
        #[arg(required = true)]
        ids: Vec<uuid::Uuid>,
    },
    /// Prints events as they are recorded, until interrupted.
    Tail {
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// Start with the events already in the table.
        #[arg(long)]
        from_start: bool,
    },
    /// Compares what the outbox table committed with what a broker holds, by event id.
    ///
    /// Reports events lost (published according to the table, not on the broker), phantoms
    /// (on the broker, never committed), duplicates and per-aggregate order violations. Exits
    /// 3 on loss, phantoms or disorder, 0 otherwise. The table keeps published events only
    /// with `relay.retention` set: audit within that period. Nothing is consumed: a RabbitMQ
    /// queue's messages go back to it unacknowledged.
    Audit(Audit),
    /// Receives a CockroachDB changefeed of the outbox table over HTTPS and relays its events
    /// to the configured sink, in commit order per aggregate.
    ///
    /// Point the changefeed at it with the statements `outbox changefeed-sql` prints for this
    /// configuration (`CREATE CHANGEFEED FOR TABLE … INTO 'webhook-https://…' WITH updated,
    /// resolved, …`, the secret as `webhook_auth_header`). A request is answered 200 once its
    /// rows are stored in the receiver's own database (`changefeed.store`, default a SQLite file
    /// `outbox-changefeed.db` in the working directory; replays are dropped), 503 when that
    /// database fails (CockroachDB sends it again), 400/401/413 when it is refused. Each
    /// resolved timestamp releases the rows before it, in commit order, to the relay (the
    /// `[relay]` settings), which publishes them. Until SIGINT or SIGTERM.
    Changefeed {
        /// Where to listen, overriding `changefeed.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// The broker URL, overriding `sink.url`.
        #[arg(long, env = "OUTBOX_SINK_URL", hide_env_values = true)]
        sink_url: Option<String>,
        /// The Authorization header value requests must carry, overriding `changefeed.secret`.
        #[arg(long, env = "OUTBOX_CHANGEFEED_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Prints the CockroachDB statements that feed the outbox table to `outbox changefeed`: the
    /// rangefeed setting, the table's row-level TTL (`changefeed.row_ttl`, default 1 day) and
    /// `CREATE CHANGEFEED … INTO 'webhook-https://…' WITH updated, resolved, …`.
    ///
    /// The secret is shown as `<redacted>` unless `--show-secret`. With `--execute` they are run
    /// on the database (`--database-url`), which must be CockroachDB, and the changefeed's job
    /// id is printed.
    ChangefeedSql {
        /// The receiver's https:// address as CockroachDB's nodes reach it, overriding
        /// `changefeed.public_url`.
        #[arg(long)]
        receiver_url: Option<String>,
        /// A PEM certificate CockroachDB should trust the receiver by (its own, self-signed, or
        /// its CA's), sent as the sink URL's `ca_cert`.
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        /// The Authorization header value, overriding `changefeed.secret`.
        #[arg(long, env = "OUTBOX_CHANGEFEED_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Print the secret instead of `<redacted>`.
        #[arg(long)]
        show_secret: bool,
        /// Run the statements on the database instead of printing them.
        #[arg(long)]
        execute: bool,
    },
}

/// `outbox audit`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Audit {
    /// The NATS stream, Kafka topic, Redis stream key or RabbitMQ queue to read.
    #[arg(long, value_name = "NAME")]
    pub(crate) read: String,
    /// `nats`, `kafka`, `redis` or `rabbitmq` (default: `sink.kind`).
    #[arg(long)]
    pub(crate) broker: Option<String>,
    /// The broker URL (default: `sink.url`).
    #[arg(long, env = "OUTBOX_SINK_URL", hide_env_values = true)]
    pub(crate) sink_url: Option<String>,
    /// NATS: only the messages of this subject (wildcards allowed).
    #[arg(long)]
    pub(crate) subject: Option<String>,
    /// The first event the audit covers: an event id, or an RFC 3339 instant
    /// (`2026-12-01T10:00:00Z`).
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// The last event the audit covers: an event id, or an RFC 3339 instant.
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLetters {
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
    /// Deletes dead letters for good (those the filters select).
    Purge {
        #[command(flatten)]
        filter: Filter,
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
pub(crate) struct Filter {
    /// Only this event type.
    #[arg(long)]
    pub(crate) event_type: Option<String>,
    /// Only this aggregate type.
    #[arg(long)]
    pub(crate) aggregate_type: Option<String>,
    /// Only this aggregate.
    #[arg(long)]
    pub(crate) aggregate_id: Option<String>,
    /// Only those dead for at least this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub(crate) older_than: Option<u64>,
}

impl Filter {
    /// The library's filter, applied by the database.
    pub(crate) fn to_query(&self) -> DeadLetterFilter {
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

    pub(crate) fn is_empty(&self) -> bool {
        self.to_query() == DeadLetterFilter::new()
    }
}
