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

impl LogSource {
    fn new(log: LogStream, config: &SourceConfig) -> Self {
        let names = LogNames::of(&config.table);
        let mut replication = log.replication;
        replication.slot.clone_from(&names.slot);
        replication.publication = names.publication.clone().into();
        replication.application_name = Some(format!(
            "{}{}",
            crate::admin::RELAY_APPLICATION_PREFIX,
            config.table
        ));
        let parked = TableSource::new(
            log.pool.clone(),
            &SourceConfig {
                parked_only: true,
                listen: false,
                ..config.clone()
            },
        );
        LogSource {
            inner: Arc::new(Inner {
                pool: log.pool,
                table: config.table.clone(),
                names,
                replication,
                ordering: config.ordering,
                retain: config.retain,
                max_batch_bytes: config.max_batch_bytes,
                parked,
                state: Mutex::new(State::default()),
                broken: AtomicBool::new(false),
                position: wal::position_table(&config.table),
                settled: tokio::sync::watch::Sender::new(None),
                recorder_started: AtomicBool::new(false),
            }),
        }
    }
}

impl Inner {
    fn database_error(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |source| Error::database(operation, &self.table, "PostgreSQL", source)
    }

    fn log_error(&self, problem: String) -> Error {
        Error::LogTailing {
            table: self.table.to_string(),
            problem,
        }
    }

    /// The aggregates with a pending parked event, read from the table.
    async fn load_parked(&self) -> Result<HashSet<(String, String)>, Error> {
        let sql = format!(
            "SELECT DISTINCT o.aggregate_type, o.aggregate_id FROM {} o WHERE o.parked AND {}",
            self.table.quoted('"'),
            pending("o")
        );
        let rows: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(self.database_error("read parked events"))?;
        Ok(rows.into_iter().collect())
    }

    async fn refresh_parked(&self, state: &mut State) -> Result<(), Error> {
        state.parked = self.load_parked().await?;
        state.parked_loaded = true;
        Ok(())
    }

    /// Opens the stream, unless another relay holds the slot (then: standby, `None`).
    async fn connect(&self) -> Result<Option<Stream>, Error> {
        let (schema, name): (String, String) = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::regclass",
        )
        .bind(self.table.quoted('"'))
        .fetch_one(&self.pool)
        .await
        .map_err(self.database_error("open the log"))?;
        let slot = wal::slot(&self.pool, &self.table)
            .await
            .map_err(self.database_error("open the log"))?;
        match slot {
            None => {
                return Err(self.log_error(format!(
                    "the replication slot `{}` does not exist: run `migrate` (or `outbox \
                     migrate`) with `log_tailing` or `wal_messages` set on the Outbox",
                    self.names.slot
                )));
            }
            Some(slot) if slot.wal_status.as_deref() == Some("lost") => {
                return Err(wal::invalidated(&self.table, &self.names.slot));
            }
            Some(_) => {}
        }
        let settled = self.recorded_position().await?;
        let mut replication = self.replication.clone();
        if let Some(settled) = settled {
            // The server skips what ended before it, and confirms it at once.
            replication.start_lsn = settled;
        }
        let started = async {
            let mut client = ReplicationClient::connect(replication).await?;
            client.wait_started().await?;
            Ok::<_, pgwire_replication::PgWireError>(client)
        };
        let client = match tokio::time::timeout(START_TIMEOUT, started).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                let text = error.to_string();
                if text.contains("55006") || text.contains("is active for PID") {
                    return Ok(None);
                }
                if text.contains("can no longer get changes") {
                    return Err(wal::invalidated(&self.table, &self.names.slot));
                }
                let hint = if text.contains("42501") {
                    "; the replication URL's role needs the REPLICATION attribute \
                     (`ALTER ROLE <role> REPLICATION`) or to be a superuser"
                } else {
                    ""
                };
                return Err(self.log_error(format!(
                    "cannot stream the replication slot `{}` ({}): {text}{hint}",
                    self.names.slot,
                    self.replication.display_connection()
                )));
            }
            Err(_) => {
                return Err(self.log_error(format!(
                    "the server did not start streaming the slot `{}` within {START_TIMEOUT:?}",
                    self.names.slot
                )));
            }
        };
        tracing::info!(table = %self.table, slot = %self.names.slot, "streaming the outbox from the transaction log");
        Ok(Some(Stream {
            client,
            relation: None,
            qualified: (schema, name),
            open: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_flight: false,
            committed_at: 0,
            xid: 0,
            settled: settled.unwrap_or(Lsn(0)),
        }))
    }

    /// The relay's record of the end of the last transaction it settled, if any.
    async fn recorded_position(&self) -> Result<Option<Lsn>, Error> {
        let sql = format!(
            "SELECT settled_lsn::text FROM {} WHERE slot = $1",
            self.position
        );
        let recorded: Option<String> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(&self.names.slot)
            .fetch_optional(&self.pool)
            .await
            .map_err(|error| match &error {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => self
                    .log_error(format!(
                        "the table {} where the relay records its position does not exist: \
                         run `migrate` (or `outbox migrate`) again with this version",
                        self.position
                    )),
                _ => self.database_error("read the relay's position")(error),
            })?;
        recorded
            .map(|text| {
                Lsn::parse(&text).map_err(|error| {
                    self.log_error(format!("the recorded position {text:?}: {error}"))
                })
            })
            .transpose()
    }

    /// Writes `settled` as the relay's position, in `conn`'s transaction or on its own. Never
    /// moves it back.
    async fn record_position(
        &self,
        conn: &mut PgConnection,
        settled: Lsn,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {p} (slot, settled_lsn) VALUES ($1, $2::pg_lsn) \
             ON CONFLICT (slot) DO UPDATE SET settled_lsn = greatest({p}.settled_lsn, excluded.settled_lsn), \
             settled_at = clock_timestamp()",
            p = self.position
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(&self.names.slot)
            .bind(settled.to_pg_string())
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Writes the latest position a WAL-mode settlement left to the recorder task, now (when
    /// the relay stops, and every 2 s in case a write of the task failed).
    async fn flush_position(&self) -> Result<(), sqlx::Error> {
        let latest = *self.settled.borrow();
        if let Some(settled) = latest {
            let mut conn = self.pool.acquire().await?;
            self.record_position(&mut conn, settled).await?;
        }
        Ok(())
    }

    /// Hands `settled` to the task that records WAL-mode positions, starting it the first time.
    /// The settlement does not wait for the write: a crash republishes the batch in flight and
    /// what was settled during the one write under way.
    fn record_later(self: &Arc<Self>, settled: Lsn) {
        self.settled.send_replace(Some(settled));
        if self.recorder_started.swap(true, Atomic::SeqCst) {
            return;
        }
        let inner = Arc::downgrade(self);
        let mut latest = self.settled.subscribe();
        latest.mark_changed();
        tokio::spawn(async move {
            // Ends when the source is dropped (the sender with it).
            while latest.changed().await.is_ok() {
                let Some(settled) = *latest.borrow_and_update() else {
                    continue;
                };
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let written = async {
                    let mut conn = inner.pool.acquire().await?;
                    inner.record_position(&mut conn, settled).await
                };
                if let Err(error) = written.await {
                    tracing::warn!(%error, table = %inner.table,
                        "could not record the relay's position; trying again with the next settlement");
                }
            }
        });
    }

    /// The stream, connecting when due. `None`: standby, or waiting to connect again.
    async fn stream<'s>(&self, state: &'s mut State) -> Result<Option<&'s mut Stream>, Error> {
        if self.broken.swap(false, Atomic::SeqCst) {
            // Its events are still in the slot: stream them again.
            state.stream = None;
        }
        if state.stream.is_none() {
            if state.retry_at.is_some_and(|at| Instant::now() < at) {
                return Ok(None);
            }
            state.retry_at = Some(Instant::now() + RECONNECT_EVERY);
            match self.connect().await? {
                Some(stream) => {
                    state.standby = false;
                    state.stream = Some(stream);
                }
                None => {
                    if !state.standby {
                        state.standby = true;
                        tracing::info!(table = %self.table, slot = %self.names.slot,
                            "another relay streams this outbox's slot: standing by to take over");
                    }
                    return Ok(None);
                }
            }
        }
        Ok(state.stream.as_mut())
    }

    fn handle(&self, stream: &mut Stream, event: ReplicationEvent) -> Result<(), Error> {
        match event {
            ReplicationEvent::Begin {
                commit_time_micros,
                xid,
                ..
            } => {
                stream.open.clear();
                stream.committed_at = commit_time_micros;
                stream.xid = xid;
            }
            ReplicationEvent::XLogData { data, .. } => match data.first() {
                Some(b'R') => {
                    if let Some(relation) = parse_relation(&data[1..], &stream.qualified)
                        .map_err(|problem| self.log_error(problem))?
                    {
                        stream.relation = Some(relation);
                    }
                }
                Some(b'I') => {
                    if let Some(message) = parse_insert(&data[1..], stream.relation)
                        .map_err(|problem| self.log_error(problem))?
                    {
                        stream.open.push(Event {
                            message,
                            row: true,
                            commit_end: None,
                            commit: Lsn(0),
                            committed_at: stream.committed_at,
                            xid: stream.xid,
                            undecodable: None,
                        });
                    }
                }
                _ => {}
            },
            ReplicationEvent::Message {
                transactional: true,
                lsn,
                prefix,
                content,
            } if prefix == self.names.prefix => {
                // Negated, a WAL message's position never meets a row's `seq` (positive).
                let seq = -i64::try_from(lsn.as_u64()).unwrap_or(i64::MAX);
                let event = match wal::decode(&content, seq) {
                    Ok(message) => Event {
                        message,
                        row: false,
                        commit_end: None,
                        commit: Lsn(0),
                        committed_at: stream.committed_at,
                        xid: stream.xid,
                        undecodable: None,
                    },
                    Err(error) => Event {
                        message: Message::new(
                            uuid::Uuid::now_v7(),
                            seq,
                            "outbox",
                            format!("wal {lsn}"),
                            "outbox.undecodable",
                            serde_json::Value::from(String::from_utf8_lossy(&content)).to_string(),
                        ),
                        row: false,
                        commit_end: None,
                        commit: Lsn(0),
                        committed_at: stream.committed_at,
                        xid: stream.xid,
                        undecodable: Some(format!(
                            "the WAL message at {lsn} does not decode as an outbox event: {error}"
                        )),
                    },
                };
                stream.open.push(event);
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if end_lsn <= stream.settled {
                    // Settled before: the server sent it again (its position moved back).
                    if !stream.open.is_empty() {
                        tracing::debug!(table = %self.table, %end_lsn, settled = %stream.settled,
                            events = stream.open.len(), "skipping a transaction the relay settled before");
                    }
                    stream.open.clear();
                    if stream.queue.is_empty() && !stream.in_flight {
                        stream.client.update_applied_lsn(end_lsn);
                    }
                } else if let Some(last) = stream.open.last_mut() {
                    last.commit_end = Some(end_lsn);
                    for event in &mut stream.open {
                        event.commit = end_lsn;
                    }
                    stream.queued_bytes += stream.open.iter().map(Event::size).sum::<usize>();
                    stream.queue.extend(stream.open.drain(..));
                } else if stream.queue.is_empty() && !stream.in_flight {
                    stream.client.update_applied_lsn(end_lsn);
                }
            }
            // Everything before it was received and settled: let the slot move on (else it
            // would retain the WAL of every other table's writes).
            ReplicationEvent::KeepAlive { wal_end, .. }
                if stream.open.is_empty() && stream.queue.is_empty() && !stream.in_flight =>
            {
                stream.client.update_applied_lsn(wal_end);
            }
            _ => {}
        }
        Ok(())
    }

    /// Receives what already arrived, until `want` events or the byte budget are queued.
    fn pump(&self, state: &mut State, want: usize) -> Result<(), Error> {
        let Some(stream) = state.stream.as_mut() else {
            return Ok(());
        };
        while stream.queue.len() < want && stream.queued_bytes < self.max_batch_bytes {
            match stream.client.recv().now_or_never() {
                None => break,
                Some(Ok(Some(event))) => {
                    if let Err(error) = self.handle(stream, event) {
                        state.stream = None;
                        return Err(error);
                    }
                }
                Some(Ok(None)) => {
                    state.stream = None;
                    break;
                }
                Some(Err(error)) => {
                    state.stream = None;
                    return Err(self.log_error(format!("the replication stream ended: {error}")));
                }
            }
        }
        Ok(())
    }

    /// Writes what a settled batch of the log leaves to the table, in one transaction: deletes
    /// (or marks) the published rows, parks the rest, and records `settled` as the relay's
    /// position. A batch that leaves nothing else to write (WAL mode) has its position
    /// recorded by a task of its own, without waiting.
    async fn write(
        self: &Arc<Self>,
        outcome: &Outcome,
        settled: Option<Lsn>,
    ) -> Result<(), sqlx::Error> {
        if outcome.is_empty() {
            if let Some(settled) = settled {
                self.record_later(settled);
            }
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        if !outcome.xids.is_empty() {
            wait_visible(&mut conn, &outcome.xids).await?;
        }
        let mut tx = crate::transaction::begin_on(conn, None).await?;
        let rows = Settlement {
            published: outcome.published_rows.clone(),
            retry: outcome.retry_rows.clone(),
            dead: outcome.dead_rows.clone(),
        };
        <Postgres as RowLocking>::settle(&mut tx, &self.table, self.retain, &rows).await?;
        let t = self.table.quoted('"');
        if !outcome.parked_rows.is_empty() {
            let sql = format!("UPDATE {t} SET parked = true WHERE seq = ANY($1)");
            sqlx::query(AssertSqlSafe(sql))
                .bind(&outcome.parked_rows)
                .execute(&mut *tx)
                .await?;
        }
        if !outcome.parked_messages.is_empty() {
            park_messages(&mut tx, &t, &outcome.parked_messages).await?;
        }
        if !outcome.commit_positions.is_empty() {
            let (seqs, positions): (Vec<i64>, Vec<String>) = outcome
                .commit_positions
                .iter()
                .map(|(seq, lsn)| (*seq, lsn.to_pg_string()))
                .unzip();
            let sql = format!(
                "UPDATE {t} o SET commit_lsn = r.lsn::pg_lsn \
                 FROM unnest($1::int8[], $2::text[]) AS r(seq, lsn) WHERE o.seq = r.seq"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(seqs)
                .bind(positions)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(settled) = settled {
            self.record_position(&mut tx, settled).await?;
        }
        tx.commit().await
    }
}

/// Returns once the transactions `xids` are visible to new snapshots. The log hands over a
/// transaction as soon as its commit record is flushed, a moment before its rows are visible
/// to other sessions: a `DELETE` in that moment would find nothing, and leave a published row
/// behind for good. Once the transactions are visible, a row that is missing is really gone
/// (published before a restart), so the statements that follow need no retry.
async fn wait_visible(conn: &mut PgConnection, xids: &[i64]) -> Result<(), sqlx::Error> {
    // A 32-bit xid of a committed transaction is in the epoch of the snapshot's xmax, or the
    // one before when it wrapped around since.
    const INVISIBLE: &str = "SELECT count(*) FROM (SELECT pg_current_snapshot() AS s) c, \
        LATERAL (SELECT (pg_snapshot_xmax(c.s)::text::int8 >> 32 << 32) AS epoch) e, unnest($1::int8[]) AS x(xid) \
        WHERE NOT pg_visible_in_snapshot((CASE WHEN (e.epoch | x.xid) >= pg_snapshot_xmax(c.s)::text::int8 \
          THEN (e.epoch | x.xid) - 4294967296 ELSE e.epoch | x.xid END)::text::xid8, c.s)";
    let mut pause = Duration::from_millis(1);
    loop {
        let invisible: i64 = sqlx::query_scalar(INVISIBLE)
            .bind(xids)
            .fetch_one(&mut *conn)
            .await?;
        if invisible == 0 {
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
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

impl Outcome {
    fn is_empty(&self) -> bool {
        self.published_rows.is_empty()
            && self.parked_rows.is_empty()
            && self.parked_messages.is_empty()
    }
}

async fn park_messages(
    conn: &mut PgConnection,
    table: &str,
    parked: &[Parked],
) -> Result<(), sqlx::Error> {
    // `ORDER BY p.ord`: the rows get their `seq` in the log's order.
    let sql = format!(
        "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers, \
           attempts, last_error, available_at, dead_at, parked) \
         SELECT p.id, p.aggregate_type, p.aggregate_id, p.event_type, p.payload::jsonb, p.headers::jsonb, \
           p.attempts, p.error, clock_timestamp() + p.delay * interval '1 second', \
           CASE WHEN p.dead THEN clock_timestamp() END, true \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
           $7::int4[], $8::text[], $9::float8[], $10::bool[]) WITH ORDINALITY \
           AS p(id, aggregate_type, aggregate_id, event_type, payload, headers, attempts, error, delay, dead, ord) \
         ORDER BY p.ord",
    );
    fn column<'a, T>(parked: &'a [Parked], value: impl Fn(&'a Parked) -> T) -> Vec<T> {
        parked.iter().map(value).collect()
    }
    sqlx::query(AssertSqlSafe(sql))
        .bind(column(parked, |p| p.message.id))
        .bind(column(parked, |p| p.message.aggregate_type.as_str()))
        .bind(column(parked, |p| p.message.aggregate_id.as_str()))
        .bind(column(parked, |p| p.message.event_type.as_str()))
        .bind(column(parked, |p| p.message.payload.as_str()))
        .bind(column(parked, |p| p.message.headers.as_deref()))
        .bind(column(parked, |p| p.attempts))
        .bind(column(parked, |p| p.error.as_deref()))
        .bind(column(parked, |p| p.delay.as_secs_f64()))
        .bind(column(parked, |p| p.dead))
        .execute(conn)
        .await?;
    Ok(())
}

impl Source for LogSource {
    type Claim = LogClaim;

    async fn claim(&self, max: usize) -> Result<Option<LogClaim>, Error> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        if !state.parked_loaded {
            inner.refresh_parked(&mut state).await?;
        }
        // The parked events, every other claim while there are any.
        state.parked_turn = !state.parked_turn;
        if state.parked_turn
            && !state.parked.is_empty()
            && let Some(claim) = inner.parked.claim(max).await?
        {
            return Ok(Some(LogClaim(Batch::Parked(claim, Arc::clone(inner)))));
        }
        if inner.stream(&mut state).await?.is_none() {
            return Ok(None);
        }
        inner.pump(&mut state, max)?;
        let ordered = inner.ordering == Ordering::PerAggregate;
        let State { stream, parked, .. } = &mut *state;
        let Some(stream) = stream.as_mut() else {
            return Ok(None);
        };
        if stream.queue.is_empty() {
            return Ok(None);
        }
        // As many as the batch and the byte budget take, and always the first.
        let mut bytes = 0_usize;
        let take = stream
            .queue
            .iter()
            .take(max.max(1))
            .take_while(|event| {
                bytes = bytes.saturating_add(event.size());
                bytes <= inner.max_batch_bytes
            })
            .count()
            .max(1);
        let mut events: Vec<Event> = stream.queue.drain(..take).collect();
        stream.queued_bytes = stream
            .queued_bytes
            .saturating_sub(events.iter().map(Event::size).sum());
        let ack = events.iter().rev().find_map(|e| e.commit_end);
        let mut behind = Vec::new();
        let mut dead = Vec::new();
        events.retain(|event| {
            if event.undecodable.is_some() {
                dead.push(event.clone());
                return false;
            }
            let key = (
                event.message.aggregate_type.clone(),
                event.message.aggregate_id.clone(),
            );
            if ordered && parked.contains(&key) {
                behind.push(event.clone());
                return false;
            }
            true
        });
        stream.in_flight = true;
        let messages = events.iter().map(|e| e.message.clone()).collect();
        Ok(Some(LogClaim(Batch::Log(StreamClaim {
            inner: Arc::clone(inner),
            messages,
            events,
            behind,
            dead,
            ack,
            settled: false,
        }))))
    }

    async fn wait(&self, timeout: Duration) {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        let deadline = Instant::now() + timeout;
        let Some(stream) = state.stream.as_mut() else {
            let until = state.retry_at.map_or(deadline, |at| at.min(deadline));
            drop(state);
            tokio::time::sleep_until(until.into()).await;
            return;
        };
        while stream.queue.is_empty() {
            match tokio::time::timeout_at(deadline.into(), stream.client.recv()).await {
                Err(_) => return,
                Ok(Ok(Some(event))) => {
                    if let Err(error) = inner.handle(stream, event) {
                        tracing::warn!(%error, "outbox log stream");
                        state.stream = None;
                        return;
                    }
                }
                Ok(Ok(None)) => {
                    state.stream = None;
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, table = %inner.table, "the replication stream ended; reconnecting");
                    state.stream = None;
                    return;
                }
            }
        }
    }

    async fn maintain(&self, retention: Option<Duration>) -> Result<f64, Error> {
        let inner = &self.inner;
        // The latest WAL-mode position, again, in case a write of the recorder failed.
        inner
            .flush_position()
            .await
            .map_err(inner.database_error("record the relay's position"))?;
        let table_lag = inner.parked.maintain(retention).await?;
        let slot = wal::slot(&inner.pool, &inner.table)
            .await
            .map_err(inner.database_error("read the slot"))?;
        if let Some(slot) = &slot {
            let table = inner.table.to_string();
            metrics::gauge!("outbox_slot_retained_bytes", "table" => table.clone())
                .set(slot.retained_bytes as f64);
            metrics::gauge!("outbox_slot_lag_bytes", "table" => table.clone())
                .set(slot.lag_bytes as f64);
            metrics::gauge!("outbox_slot_active", "table" => table)
                .set(f64::from(u8::from(slot.active)));
            if slot.wal_status.as_deref() == Some("lost") {
                return Err(wal::invalidated(&inner.table, &inner.names.slot));
            }
        }
        let mut state = inner.state.lock().await;
        inner.refresh_parked(&mut state).await?;
        // The oldest event received and not yet published.
        let queued = state
            .stream
            .as_ref()
            .and_then(|s| s.queue.front().map(|e| e.committed_at))
            .map_or(0.0, age_of);
        Ok(table_lag.max(queued))
    }

    async fn close(&self) {
        if let Err(error) = self.inner.flush_position().await {
            tracing::warn!(%error, table = %self.inner.table,
                "could not record the relay's last position: a restart may publish the last 50 ms again");
        }
        let mut state = self.inner.state.lock().await;
        if let Some(mut stream) = state.stream.take() {
            // The worker sends no last status with CopyDone: let the latest confirmation go
            // out first, so that a graceful stop publishes nothing twice.
            tokio::time::sleep(STATUS_INTERVAL * 2).await;
            // CopyDone: the slot is free for a standby at once.
            if let Err(error) = stream.client.shutdown().await {
                tracing::debug!(%error, "closing the replication stream");
            }
        }
    }
}

/// Seconds since `micros` (µs since 2000-01-01, PostgreSQL's epoch).
fn age_of(micros: i64) -> f64 {
    const POSTGRES_EPOCH: i64 = 946_684_800_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    (now - POSTGRES_EPOCH - micros).max(0) as f64 / 1e6
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

impl Drop for StreamClaim {
    fn drop(&mut self) {
        if !self.settled {
            // Unsettled: the slot still holds these events; stream them again.
            self.inner.broken.store(true, Atomic::SeqCst);
        }
    }
}

impl StreamClaim {
    /// Sorts the events by what the relay did with them.
    fn outcome(&self, settlement: Settlement) -> Outcome {
        let published: HashSet<i64> = settlement.published.into_iter().collect();
        let retry: HashMap<i64, (String, Duration)> = settlement
            .retry
            .into_iter()
            .map(|(seq, error, delay)| (seq, (error, delay)))
            .collect();
        let dead: HashMap<i64, String> = settlement.dead.into_iter().collect();
        let mut outcome = Outcome::default();
        let key = |m: &Message| (m.aggregate_type.clone(), m.aggregate_id.clone());
        let tried = self.events.iter().map(|event| {
            let seq = event.message.seq;
            let fate = if published.contains(&seq) {
                Fate::Published
            } else if let Some((error, delay)) = retry.get(&seq) {
                Fate::Retry(error.clone(), *delay)
            } else if let Some(error) = dead.get(&seq) {
                Fate::Dead(error.clone())
            } else {
                Fate::Behind
            };
            (event, fate)
        });
        let behind = self.behind.iter().map(|event| (event, Fate::Behind));
        let undecodable = self.dead.iter().map(|event| {
            let error = event.undecodable.clone().unwrap_or_default();
            (event, Fate::Dead(error))
        });
        let retain = self.inner.retain;
        for (event, fate) in tried.chain(behind).chain(undecodable) {
            let message = &event.message;
            if event.row && (retain || !matches!(fate, Fate::Published)) {
                outcome.commit_positions.push((message.seq, event.commit));
            }
            if matches!(fate, Fate::Retry(..) | Fate::Behind) {
                outcome.held.insert(key(message));
            }
            match (fate, event.row) {
                (Fate::Published, true) => outcome.published_rows.push(message.seq),
                (Fate::Published, false) => {}
                (Fate::Retry(error, delay), true) => {
                    outcome.parked_rows.push(message.seq);
                    outcome.retry_rows.push((message.seq, error, delay));
                }
                (Fate::Dead(error), true) => {
                    outcome.parked_rows.push(message.seq);
                    outcome.dead_rows.push((message.seq, error));
                }
                (Fate::Behind, true) => outcome.parked_rows.push(message.seq),
                (fate, false) => {
                    let (attempts, error, delay, dead) = match fate {
                        Fate::Retry(error, delay) => {
                            (message.attempts + 1, Some(error), delay, false)
                        }
                        Fate::Dead(error) => {
                            (message.attempts + 1, Some(error), Duration::ZERO, true)
                        }
                        _ => (message.attempts, None, Duration::ZERO, false),
                    };
                    outcome.parked_messages.push(Parked {
                        message: message.clone(),
                        attempts,
                        error,
                        delay,
                        dead,
                    });
                }
            }
        }
        let mut xids: Vec<i64> = self
            .events
            .iter()
            .chain(&self.behind)
            .filter(|e| e.row)
            .map(|e| i64::from(e.xid))
            .collect();
        xids.sort_unstable();
        xids.dedup();
        outcome.xids = xids;
        // Parked in the log's order, so that their rows' `seq` keep it.
        outcome
            .parked_messages
            .sort_by_key(|p| std::cmp::Reverse(p.message.seq));
        outcome
    }
}

/// What became of one event of the log.
enum Fate {
    Published,
    Retry(String, Duration),
    Dead(String),
    /// Not tried: behind a failure of its aggregate.
    Behind,
}

impl Claim for LogClaim {
    fn take_messages(&mut self) -> Vec<Message> {
        match &mut self.0 {
            Batch::Parked(claim, _) => claim.take_messages(),
            Batch::Log(claim) => std::mem::take(&mut claim.messages),
        }
    }

    /// The parked events' claims note what they hold like a polling relay's; the log's events
    /// keep no note (the slot and the relay's position say where the stream stands).
    async fn in_hand(&mut self, messages: &[Message]) -> Result<HashMap<i64, u32>, Error> {
        match &mut self.0 {
            Batch::Parked(claim, _) => claim.in_hand(messages).await,
            Batch::Log(_) => Ok(HashMap::new()),
        }
    }

    async fn settle(self, settlement: Settlement) -> Result<(), Error> {
        match self.0 {
            Batch::Parked(claim, inner) => {
                claim.settle(settlement).await?;
                // An aggregate whose parked events are all gone flows from the log again.
                let mut state = inner.state.lock().await;
                inner.refresh_parked(&mut state).await
            }
            Batch::Log(mut claim) => {
                let outcome = claim.outcome(settlement);
                let inner = Arc::clone(&claim.inner);
                let written =
                    match tokio::time::timeout(SETTLE_TIMEOUT, inner.write(&outcome, claim.ack))
                        .await
                    {
                        Ok(written) => written.map_err(inner.database_error("settle")),
                        Err(_) => Err(inner.log_error(format!(
                            "the batch's writes took longer than {SETTLE_TIMEOUT:?}"
                        ))),
                    };
                let mut state = inner.state.lock().await;
                if let Err(error) = written {
                    // Unconfirmed, its events are still in the slot: end the stream now (the
                    // server may be waiting for it to shut down) and stream them again.
                    state.stream = None;
                    return Err(error);
                }
                if let Some(stream) = state.stream.as_mut() {
                    stream.in_flight = false;
                    if let Some(ack) = claim.ack {
                        stream.client.update_applied_lsn(ack);
                    }
                }
                state.parked.extend(outcome.held);
                claim.settled = true;
                Ok(())
            }
        }
    }
}

/// Reads a pgoutput Relation message (after its tag): the outbox table's, or `None` for
/// another table of the publication.
fn parse_relation(data: &[u8], table: &(String, String)) -> Result<Option<Relation>, String> {
    let mut reader = Reader(data);
    let id = reader.u32()?;
    let schema = reader.cstr()?;
    let name = reader.cstr()?;
    if (schema, name) != (table.0.as_str(), table.1.as_str()) {
        return Ok(None);
    }
    reader.u8()?; // replica identity
    let count = reader.u16()?;
    let mut names = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        reader.u8()?; // flags
        names.push(reader.cstr()?.to_owned());
        reader.u32()?; // type
        reader.u32()?; // modifier
    }
    let mut columns = [0; 8];
    for (slot, wanted) in columns.iter_mut().zip(COLUMNS) {
        *slot = names
            .iter()
            .position(|n| n == wanted)
            .ok_or_else(|| format!("the outbox table has no column `{wanted}`: run `migrate`"))?;
    }
    Ok(Some(Relation { id, columns }))
}

/// Reads a pgoutput Insert message (after its tag) of the outbox table; `None` for another
/// table's.
fn parse_insert(data: &[u8], relation: Option<Relation>) -> Result<Option<Message>, String> {
    let mut reader = Reader(data);
    let id = reader.u32()?;
    let Some(relation) = relation.filter(|r| r.id == id) else {
        return Ok(None);
    };
    if reader.u8()? != b'N' {
        return Err("pgoutput: an Insert without a new tuple".into());
    }
    let count = reader.u16()?;
    let mut values: Vec<Option<&str>> = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        match reader.u8()? {
            b'n' | b'u' => values.push(None),
            b't' => {
                let len = reader.u32()? as usize;
                let bytes = reader.take(len)?;
                values.push(Some(
                    std::str::from_utf8(bytes).map_err(|_| "pgoutput: a value is not UTF-8")?,
                ));
            }
            kind => return Err(format!("pgoutput: unexpected column kind {kind:#x}")),
        }
    }
    let value = |i: usize| -> Result<Option<&str>, String> {
        values
            .get(relation.columns[i])
            .copied()
            .ok_or_else(|| "pgoutput: a row has fewer columns than its relation".into())
    };
    let required = |i: usize| -> Result<&str, String> {
        value(i)?.ok_or_else(|| format!("the outbox row has no `{}`", COLUMNS[i]))
    };
    let seq = required(0)?
        .parse()
        .map_err(|_| "the outbox row's seq is not a number")?;
    let event_id = required(1)?
        .parse()
        .map_err(|_| "the outbox row's id is not a UUID")?;
    let attempts = value(7)?.and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut message = Message::new(
        event_id,
        seq,
        required(2)?,
        required(3)?,
        required(4)?,
        required(5)?,
    )
    .with_attempts(attempts);
    if let Some(headers) = value(6)? {
        message = message.with_headers(headers);
    }
    Ok(Some(message))
}

/// Big-endian reads of a pgoutput message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("pgoutput: a message ends early".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstr(&mut self) -> Result<&'a str, String> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or("pgoutput: a name without its terminator")?;
        let text =
            std::str::from_utf8(&self.0[..end]).map_err(|_| "pgoutput: a name is not UTF-8")?;
        self.0 = &self.0[end + 1..];
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_message(columns: &[&str]) -> Vec<u8> {
        let mut data = 16384_u32.to_be_bytes().to_vec();
        data.extend(b"public\0outbox\0d");
        data.extend((columns.len() as u16).to_be_bytes());
        for column in columns {
            data.push(0);
            data.extend(column.as_bytes());
            data.push(0);
            data.extend(25_u32.to_be_bytes());
            data.extend((-1_i32).to_be_bytes());
        }
        data
    }

    #[test]
    fn rows_decode_from_pgoutput_whatever_the_column_order() {
        let mut columns = COLUMNS.to_vec();
        columns.reverse();
        columns.insert(3, "created_at");
        let table = ("public".to_owned(), "outbox".to_owned());
        let relation = parse_relation(&relation_message(&columns), &table)
            .expect("parses")
            .expect("the outbox table");
        let id = uuid::Uuid::now_v7();
        let mut row = 16384_u32.to_be_bytes().to_vec();
        row.push(b'N');
        row.extend((columns.len() as u16).to_be_bytes());
        for column in &columns {
            let value = match *column {
                "seq" => Some("42".to_owned()),
                "id" => Some(id.to_string()),
                "aggregate_type" => Some("Account".into()),
                "aggregate_id" => Some("7".into()),
                "event_type" => Some("Opened".into()),
                "payload" => Some(r#"{"a": 1}"#.into()),
                "attempts" => Some("0".into()),
                _ => None,
            };
            match value {
                Some(text) => {
                    row.push(b't');
                    row.extend((text.len() as u32).to_be_bytes());
                    row.extend(text.as_bytes());
                }
                None => row.push(b'n'),
            }
        }
        let message = parse_insert(&row, Some(relation))
            .expect("parses")
            .expect("our row");
        assert_eq!(
            message,
            Message::new(id, 42, "Account", "7", "Opened", r#"{"a": 1}"#)
        );
        let other = ("public".to_owned(), "orders".to_owned());
        assert!(
            parse_relation(&relation_message(&columns), &other)
                .expect("parses")
                .is_none()
        );
        assert!(
            parse_relation(&relation_message(&["seq"]), &table).is_err(),
            "a column missing"
        );
        assert!(
            parse_insert(&row[..row.len() - 3], Some(relation)).is_err(),
            "cut short"
        );
    }

    #[test]
    fn replication_urls_are_read_and_refused_with_a_reason() {
        let config =
            replication_config("postgres://rep%40x:p%2Fw@db.example:6543/app?sslmode=require")
                .expect("valid");
        assert_eq!(config.host, "db.example");
        assert_eq!(config.port, 6543);
        assert_eq!(config.user, "rep@x");
        assert_eq!(config.password, "p/w");
        assert_eq!(config.database, "app");
        assert!(config.tls.mode.requires_tls());
        for (url, reason) in [
            ("mysql://x@h/db", "scheme"),
            ("postgres://u:secret@h/db?sslmode=maybe", "sslmode"),
            ("postgres://u:secret@h/db?foo=1", "unknown parameter"),
            ("no url", "not a URL"),
        ] {
            let error = replication_config(url).expect_err(url).to_string();
            assert!(error.contains(reason), "{url}: {error}");
            assert!(
                !error.contains("secret"),
                "{url}: the password is never shown"
            );
        }
    }
}
