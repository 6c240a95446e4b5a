//! Tailing PostgreSQL's transaction log: a relay [`Source`] that streams the outbox from a
//! logical replication slot with the `pgoutput` plugin, pushed by the server as transactions
//! commit, in commit order, with no claim queries.
//!
//! Two kinds of events arrive on the stream, and a [`LogSource`] takes both:
//!
//! * **rows** of the outbox table ([`Outbox::log_tailing`](crate::Outbox::log_tailing)): the
//!   table is in the slot's publication; a published row is deleted afterwards with the rest of
//!   its batch (one statement per batch), or marked published in retention mode;
//! * **WAL messages** ([`Outbox::wal_messages`](crate::Outbox::wal_messages)), written by
//!   `pg_logical_emit_message` with the prefix `outbox:<table>`: nothing to delete.
//!
//! # Acknowledgement
//!
//! The slot's confirmed position advances past a transaction only once each of its events is
//! settled: published, or parked in the table (below). It is cumulative: a transaction in
//! flight holds back the confirmation of every later one. A relay that restarts streams again
//! from the confirmed position: at least once, the duplicates bounded by what was in flight.
//!
//! # The relay's own record of its position
//!
//! The slot's `confirmed_flush_lsn` is the server's record of how far the relay got, and it can
//! move back: PostgreSQL 15 writes it to disk only when the slot's `restart_lsn` advances too,
//! so a restart of the server may hand a relay transactions it settled long ago (every one of
//! them, for a slot of a quiet table). The relay therefore keeps its own durable record, in the
//! table `<table>_log_position` (one row per slot): the end of the last transaction it settled,
//! written in the settlement's own transaction in table mode; in WAL mode, where a settlement
//! writes nothing else, by a task of its own that the settlement does not wait for (one write at
//! a time, always the latest position), and when the relay stops. A relay starts streaming from
//! that record and skips every transaction that ended at or before it, whatever the server
//! replays: a graceful stop, a server restart or a standby's takeover republish nothing, and a
//! crash republishes at most the batch in flight and (WAL mode) what was settled while the
//! record's last write was under way.
//!
//! # Failures: parking
//!
//! An event that fails is *parked*: its row is marked `parked` (table mode) or a row is
//! inserted for it (WAL messages), with its attempt count, error and next due time, or as a
//! dead letter. While an aggregate has a pending parked event, its later events from the log
//! are parked behind it (unless the relay is [unordered](crate::relay::Ordering::Unordered)).
//! The parked rows are claimed from the table with the same retries, backoff, dead letters and
//! replay as a polling relay, between batches of the log; once an aggregate has no pending
//! parked event its events flow from the log again. Other aggregates are never held up.
//!
//! # One relay per slot
//!
//! PostgreSQL lets one session stream a slot. A second relay started on the same table waits
//! as a standby, asking every second, and takes over when the first one stops or dies.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as Atomic};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres};
use tokio::sync::Mutex;

use super::relay::{PgClaim, PgSource};
use super::wal::{self, LogNames};
use crate::message::Message;
use crate::relay::source::{Claim, Settlement, Source, SourceConfig};
use crate::relay::{IntoSource, Ordering};
use crate::store::TableSource;
use crate::store::locking::RowLocking;
use crate::store::table::pending;
use crate::{Error, TableName};

/// How long a relay waits before asking again for a slot that another relay streams, or after
/// a failed connection.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// How long a batch's writes may take. A shutting-down PostgreSQL refuses new connections but
/// waits for its walsender to be confirmed everything (or stopped): a settlement that cannot
/// write must give the stream up quickly, not hold the server's shutdown.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server may take to accept `START_REPLICATION`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the confirmed position reaches the server, at most: what a crashed relay
/// publishes again is what it published in the last interval, plus the batch in flight.
const STATUS_INTERVAL: Duration = Duration::from_millis(50);

/// The transaction log of a PostgreSQL database, as where a relay takes an outbox's events:
/// give it to [`Relay::builder`](crate::relay::Relay::builder) instead of the pool.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), outbox::Error> {
/// use outbox::Outbox;
/// use outbox::relay::{ChannelSink, Relay};
/// use outbox::store::postgres::LogStream;
///
/// const OUTBOX: Outbox = Outbox::new().wal_messages();
/// OUTBOX.migrate(&pool).await?; // the table, the publication and the slot
///
/// let log = LogStream::new(pool, "postgres://replicator:secret@127.0.0.1:5432/app")?;
/// let (sink, _events) = ChannelSink::new(1024);
/// Relay::builder(log, sink).outbox(&OUTBOX).build().run(std::future::pending()).await;
/// # Ok(()) }
/// ```
///
/// The URL is the replication connection's: a role with the `REPLICATION` attribute (or a
/// superuser), the database of the outbox, and `sslmode` = `disable` (the default), `require`,
/// `verify-ca` or `verify-full`. The pool serves the table: parking, deleting published rows,
/// the slot's statistics.
#[derive(Debug, Clone)]
pub struct LogStream {
    pool: PgPool,
    replication: ReplicationConfig,
}

impl LogStream {
    /// A log stream of `pool`'s database, replicated over the connection `url` describes
    /// (`postgres://user:password@host:port/database?sslmode=...`).
    pub fn new(pool: PgPool, url: &str) -> Result<Self, Error> {
        Ok(LogStream {
            pool,
            replication: replication_config(url)?,
        })
    }
}

impl IntoSource for LogStream {
    type Source = LogSource;

    fn __into_source(self, config: &SourceConfig) -> LogSource {
        LogSource::new(self, config)
    }
}

/// Reads a replication URL; the error never repeats the password.
fn replication_config(url: &str) -> Result<ReplicationConfig, Error> {
    let invalid = |problem: String| Error::InvalidReplicationUrl { problem };
    let parsed = url::Url::parse(url).map_err(|e| invalid(format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(invalid(format!(
            "the scheme is `{}`, expected `postgres://`",
            parsed.scheme()
        )));
    }
    let decode = |text: &str| {
        url::form_urlencoded::parse(format!("x={text}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    };
    let user = match parsed.username() {
        "" => "postgres".to_owned(),
        user => decode(user),
    };
    let password = parsed.password().map(decode).unwrap_or_default();
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let database = match parsed.path().trim_start_matches('/') {
        "" => user.clone(),
        database => decode(database),
    };
    let mut tls = TlsConfig::disabled();
    for (key, value) in parsed.query_pairs() {
        match (&*key, &*value) {
            ("sslmode", "disable" | "allow" | "prefer") => tls = TlsConfig::disabled(),
            ("sslmode", "require") => tls = TlsConfig::require(),
            ("sslmode", "verify-ca") => tls = TlsConfig::verify_ca(None),
            ("sslmode", "verify-full") => tls = TlsConfig::verify_full(None),
            ("sslmode", other) => {
                return Err(invalid(format!(
                    "sslmode `{other}` is none of disable, require, verify-ca, verify-full"
                )));
            }
            (other, _) => {
                return Err(invalid(format!(
                    "unknown parameter `{other}` (the replication URL takes sslmode only)"
                )));
            }
        }
    }
    Ok(
        ReplicationConfig::new(host, user, password, database, "", "")
            .with_port(parsed.port().unwrap_or(5432))
            .with_tls(tls)
            .with_status_interval(STATUS_INTERVAL)
            .with_wakeup_interval(Duration::from_secs(1)),
    )
}

/// The relay's source reading the transaction log; see the [module](self) for how it works.
#[derive(Debug)]
pub struct LogSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    table: TableName,
    names: LogNames,
    replication: ReplicationConfig,
    ordering: Ordering,
    retain: bool,
    /// The bytes of payloads and headers a claim takes, and the stream queues, at most (but
    /// always one event).
    max_batch_bytes: usize,
    /// The events parked in the table, claimed as a polling relay would.
    parked: PgSource,
    state: Mutex<State>,
    /// A claim was dropped unsettled or failed to settle: the stream starts again from the
    /// slot, which still holds its events.
    broken: AtomicBool,
    /// The quoted table of the relay's own position (see the [module](self) documentation).
    position: String,
    /// WAL mode: the latest settled position, for the task that writes it (one write at a time,
    /// always the latest), started with the first.
    settled: tokio::sync::watch::Sender<Option<Lsn>>,
    recorder_started: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    stream: Option<Stream>,
    /// No connection attempt before then.
    retry_at: Option<Instant>,
    /// Waiting for the slot held by another relay (logged once per wait).
    standby: bool,
    /// Aggregates with a pending parked event: the parked events are claimed while there are
    /// any, and (in per-aggregate order) the aggregates' log events are parked behind them.
    parked: HashSet<(String, String)>,
    parked_loaded: bool,
    /// Alternates the parked events' claims with the log's.
    parked_turn: bool,
}

struct Stream {
    client: ReplicationClient,
    /// The outbox table's relation id in this session, once announced.
    relation: Option<Relation>,
    /// `(schema, table)` of the outbox table.
    qualified: (String, String),
    /// The events of the transaction being received.
    open: Vec<Event>,
    /// Events of committed transactions, in commit order, not yet claimed.
    queue: VecDeque<Event>,
    /// The bytes of the queued events' payloads and headers.
    queued_bytes: usize,
    /// A claim of the log's events is out: acknowledge nothing beyond it.
    in_flight: bool,
    /// The commit time of the transaction being received (µs since 2000-01-01).
    committed_at: i64,
    /// The id of the transaction being received.
    xid: u32,
    /// The relay's durable record of its position: transactions that ended at or before it
    /// were settled already, and are skipped if the server sends them again.
    settled: Lsn,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("queued", &self.queue.len())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

/// Where the outbox table's columns are in its rows.
#[derive(Debug, Clone, Copy)]
struct Relation {
    id: u32,
    columns: [usize; 8],
}

/// The columns a row event needs, in the order of [`Relation::columns`].
const COLUMNS: [&str; 8] = [
    "seq",
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
    "headers",
    "attempts",
];

#[derive(Debug, Clone)]
struct Event {
    message: Message,
    /// A row of the table (else a WAL message: parking inserts a row).
    row: bool,
    /// Set on the last event of its transaction: the position to confirm once it is settled.
    commit_end: Option<Lsn>,
    /// The end of its transaction's commit: its place in commit order (kept with a row the
    /// table keeps, for the audit).
    commit: Lsn,
    /// When its transaction committed (µs since 2000-01-01).
    committed_at: i64,
    /// Its transaction's id: its row is visible to others only once that transaction is.
    xid: u32,
    /// A WAL message with our prefix that does not decode: a dead letter at once.
    undecodable: Option<String>,
}

impl Event {
    /// The bytes of its payload and headers: what a claim's byte budget counts.
    fn size(&self) -> usize {
        self.message.payload.len() + self.message.headers.as_ref().map_or(0, String::len)
    }
}

/// A WAL message to keep in the table: its attempts, error, delay before the next one, dead.
#[derive(Debug)]
struct Parked {
    message: Message,
    attempts: i32,
    error: Option<String>,
    delay: Duration,
    dead: bool,
}

/// What settling a batch of the log writes.
#[derive(Debug, Default)]
struct Outcome {
    published_rows: Vec<i64>,
    retry_rows: Vec<(i64, String, Duration)>,
    dead_rows: Vec<(i64, String)>,
    /// Rows held back behind a failure: parked as they are.
    parked_rows: Vec<i64>,
    parked_messages: Vec<Parked>,
    /// Aggregates whose later events must wait for a parked one.
    held: HashSet<(String, String)>,
    /// The transactions of the rows written to.
    xids: Vec<i64>,
    /// Rows the table keeps (published in retention mode, parked), with where their
    /// transactions committed: the audit's commit order.
    commit_positions: Vec<(i64, Lsn)>,
}

/// A batch of a [`LogSource`]: events of the log, or parked events of the table.
#[derive(Debug)]
pub struct LogClaim(Batch);

#[derive(Debug)]
enum Batch {
    Parked(PgClaim, Arc<Inner>),
    Log(StreamClaim),
}

/// Events taken from the log, held until settled.
#[derive(Debug)]
struct StreamClaim {
    inner: Arc<Inner>,
    messages: Vec<Message>,
    /// The events given to the relay.
    events: Vec<Event>,
    /// Events of aggregates with a parked event: parked behind it, not published.
    behind: Vec<Event>,
    /// WAL messages that do not decode: dead letters.
    dead: Vec<Event>,
    /// Confirmed once settled: the end of the last transaction wholly in this batch or before.
    ack: Option<Lsn>,
    settled: bool,
}

/// What became of one event of the log.
enum Fate {
    Published,
    Retry(String, Duration),
    Dead(String),
    /// Not tried: behind a failure of its aggregate.
    Behind,
}

mod claim;
mod park;
mod pgoutput;
mod source;
mod stream;

use park::{park_messages, wait_visible};
use pgoutput::{parse_insert, parse_relation};
