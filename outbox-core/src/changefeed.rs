//! Receiving a CockroachDB changefeed of the outbox table: each committed row, pushed by
//! CockroachDB's webhook sink, is stored in an outbox table of the receiver's own and published
//! from there by the ordinary [`Relay`](crate::relay::Relay), in commit order per aggregate.
//!
//! CockroachDB's changefeed (`CREATE CHANGEFEED FOR TABLE outbox INTO 'webhook-https://…'`)
//! replaces the relay's polling there: it reads committed rows from CockroachDB's own log and
//! POSTs them in batches, in the `wrapped` envelope:
//!
//! ```json
//! {"payload": [{"after": {"id": "…", "seq": 7, "aggregate_type": "account",
//!   "aggregate_id": "42", "event_type": "Deposited", "payload": {"amount": 10},
//!   "headers": null}, "key": ["…"], "topic": "outbox",
//!   "updated": "1733300000000000000.0000000000"}],
//!  "length": 1}
//! ```
//!
//! and, with the `resolved` option, progress messages `{"resolved": "<timestamp>"}`: no row
//! with an earlier `updated` timestamp will come any more.
//!
//! **Why rows wait.** CockroachDB orders per key only, and every outbox row is its own key: it
//! sends batches in parallel, and a batch lists rows in any order (CockroachDB's
//! `changefeed-messages` page; `batching_sink.go`). An aggregate's events can only be put in
//! commit order once none older can come, which is what a resolved timestamp says. So
//! [`Receiver::receive`] stores a request's rows in a staging table (`<table>_changefeed`)
//! and answers 200 once they are durable; when a resolved timestamp arrives, a task of the
//! receiver moves every staged row older than it into the outbox table, ordered by `updated`,
//! then the source table's `seq`. The relay of that table publishes them with everything it
//! does for any outbox — per-aggregate order, retries, dead letters, the delivery timeout,
//! metrics and spans. The cost is latency: an event waits for the next resolved timestamp,
//! about the changefeed's `resolved` interval ([`Setup::resolved_every`], 10 s by default).
//!
//! **Answers.** 200 once the rows are stored (whatever the sink's state: a broker outage
//! delays publishing, never the answer); 503 when the receiver's database fails or does not
//! answer within [`ReceiverConfig::answer_within`], so that CockroachDB sends the request again
//! (it retries until it gets a 2xx); 400 for a body that is not a changefeed request (with the
//! reason, also logged), 401 for a wrong secret, 413 for a body over the cap.
//!
//! **Replays** are expected — a retried request, a changefeed restarted from an older
//! checkpoint, or created again with an initial scan — and dropped by id: the staging table
//! keeps the id of every released row for [`ReceiverConfig::remember`]. A delete (`"after":
//! null`, e.g. row-level TTL removing a row) is not an event and is skipped.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::Outbox;
//! use outbox::changefeed::{Receiver, ReceiverConfig};
//! use outbox::relay::{HandlerSink, Message, Relay};
//!
//! // The receiver's own outbox: a SQLite file by default (any of the three databases).
//! let pool = sqlx::SqlitePool::connect("sqlite://changefeed.db?mode=rwc").await?;
//! let receiver = Receiver::open(pool.clone(), Outbox::DEFAULT, ReceiverConfig::default().secret("Bearer s3cret")).await?;
//!
//! // Any sink: NATS, Kafka, Redis, RabbitMQ, MQTT, a webhook, or a handler of your own.
//! let sink = HandlerSink::new(|message: Message| async move {
//!     println!("{} {}", message.event_type, message.payload);
//!     Ok(())
//! });
//! let relay = Relay::builder(pool, sink).outbox(receiver.outbox()).build();
//! tokio::spawn(relay.run(std::future::pending()));
//!
//! // In the HTTPS handler CockroachDB posts to: the Authorization header and the body.
//! let body = br#"{"resolved": "1733300000000000000.0000000000"}"#;
//! match receiver.receive(Some("Bearer s3cret"), body).await {
//!     Ok(received) => assert!(received.resolved.is_some()), // answer 200
//!     Err(error) => panic!("answer {} with {error}", error.status()),
//! }
//! # Ok(()) }
//! ```

mod setup;
mod staging;

#[doc(hidden)]
pub use self::staging::{Staged, Staging, Timestamp};

pub use self::setup::{
    CockroachVersion, ESCAPING_GROWTH, FLUSH_MESSAGES, ROW_OVERHEAD, Setup, SetupError,
    flush_bytes, ttl_parameters,
};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Outbox;

/// A CockroachDB HLC timestamp, as changefeeds write it: `"<wall nanoseconds>.<logical>"`
/// (`"1733300000000000000.0000000000"`). Ordered by wall time, then logical counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    /// Nanoseconds since the Unix epoch.
    pub wall: i128,
    /// The logical counter within one wall time.
    pub logical: u32,
}

impl Hlc {
    /// Parses `"<wall>.<logical>"` (the logical part may be missing).
    pub fn parse(text: &str) -> Result<Hlc, ChangefeedError> {
        let bad = || ChangefeedError::Malformed(format!("`{text}` is not an HLC timestamp"));
        let (wall, logical) = text.split_once('.').unwrap_or((text, "0"));
        if wall.is_empty() || !wall.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if !logical.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let wall: i128 = wall.parse().map_err(|_| bad())?;
        let logical: u32 = if logical.is_empty() {
            0
        } else {
            logical.parse().map_err(|_| bad())?
        };
        Ok(Hlc { wall, logical })
    }

    /// As the receiver's staging table stores it.
    fn stored(&self) -> Timestamp {
        (
            i64::try_from(self.wall).unwrap_or(i64::MAX),
            i64::from(self.logical),
        )
    }

    /// How far behind now this timestamp is, in seconds (0 if it is in the future).
    pub fn lag_seconds(&self) -> f64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        ((now - self.wall).max(0) as f64) / 1e9
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:010}", self.wall, self.logical)
    }
}

/// A changefeed job of CockroachDB, as `SHOW CHANGEFEED JOBS` lists it: what `outbox status`
/// shows of a CockroachDB outbox ([`changefeed_jobs`](crate::store::postgres::changefeed_jobs)).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ChangefeedJob {
    /// The job's id.
    pub id: String,
    /// `running`, `paused`, `failed`, …
    pub status: String,
    /// Every change before this timestamp has been emitted (`None` before the first
    /// checkpoint).
    #[serde(serialize_with = "hlc_text")]
    pub high_water: Option<Hlc>,
    /// The statement that created it.
    pub description: String,
}

fn hlc_text<S: serde::Serializer>(hlc: &Option<Hlc>, serializer: S) -> Result<S::Ok, S::Error> {
    match hlc {
        Some(hlc) => serializer.serialize_str(&hlc.to_string()),
        None => serializer.serialize_none(),
    }
}

/// Why a request was refused, and the HTTP status that says so.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangefeedError {
    /// The `Authorization` header is missing or not the configured secret (401).
    #[error("the request's Authorization header is missing or wrong")]
    Unauthorized,
    /// The body is larger than [`ReceiverConfig::max_body_bytes`] (413).
    #[error("the body has {size} bytes, over the cap of {cap}")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// The body is not a changefeed request (400); the reason says what is wrong.
    #[error("not a changefeed request: {0}")]
    Malformed(String),
    /// The rows could not be made durable (503): the receiver's database failed or did not
    /// answer within [`ReceiverConfig::answer_within`]. CockroachDB sends the request again;
    /// rows stored meanwhile are then dropped as replays.
    #[error("the {rows} rows could not be stored: {reason}")]
    Unavailable {
        /// Rows in the request.
        rows: usize,
        /// What failed.
        reason: String,
    },
}

impl ChangefeedError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            ChangefeedError::Unauthorized => 401,
            ChangefeedError::TooLarge { .. } => 413,
            ChangefeedError::Malformed(_) => 400,
            ChangefeedError::Unavailable { .. } => 503,
        }
    }
}

/// What one accepted request did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Received {
    /// Events stored, to be published once a resolved timestamp covers them.
    pub staged: usize,
    /// Rows dropped as replays: an id the receiver already holds or released.
    pub replays: usize,
    /// Deletes skipped (`"after": null`).
    pub deletes: usize,
    /// The resolved timestamp the request carried, if it was a resolved message.
    pub resolved: Option<Hlc>,
}

/// How a [`Receiver`] checks, answers and remembers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiverConfig {
    /// The exact `Authorization` header value CockroachDB sends (its `webhook_auth_header`
    /// option); `None` accepts any request (only behind a network boundary of your own).
    pub secret: Option<String>,
    /// The largest body accepted (default [`ReceiverConfig::DEFAULT_MAX_BODY_BYTES`], 64 MiB):
    /// what the settings [`Setup`] generates for this cap can produce, escaping included.
    pub max_body_bytes: usize,
    /// How long the ids of released events are remembered, to drop replays (default 25 hours:
    /// [`Setup::DEFAULT_TTL`] and an hour). Keep it above the source table's row TTL, so that a
    /// changefeed created again — whose initial scan sends every row still in the table — sends
    /// nothing twice.
    pub remember: Duration,
    /// How long storing a request's rows may take before it is answered 503 (default 2 s,
    /// under CockroachDB's 3 s client timeout).
    pub answer_within: Duration,
}

impl ReceiverConfig {
    /// The default body cap: 64 MiB.
    pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            secret: None,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            remember: Setup::DEFAULT_TTL + Duration::from_secs(3600),
            answer_within: Duration::from_secs(2),
        }
    }
}

impl ReceiverConfig {
    /// Requests must carry `Authorization: <secret>`.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// The largest body accepted (give [`Setup::max_body_bytes`] the same).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// How long released ids are remembered.
    pub fn remember(mut self, period: Duration) -> Self {
        self.remember = period;
        self
    }

    /// How long storing a request may take before it is answered 503.
    pub fn answer_within(mut self, within: Duration) -> Self {
        self.answer_within = within.max(Duration::from_millis(1));
        self
    }
}

/// Receives a CockroachDB changefeed of the outbox table into an outbox table of its own, from
/// which a [`Relay`](crate::relay::Relay) publishes: see the [module](self) for the protocol
/// and the guarantees.
#[derive(Debug)]
pub struct Receiver<DB: Staging> {
    pool: sqlx::Pool<DB>,
    outbox: Outbox,
    config: ReceiverConfig,
    shared: Arc<Shared>,
    /// The newest resolved timestamp, for the releasing task; dropped with the receiver, which
    /// ends the task.
    resolved: tokio::sync::watch::Sender<Option<Hlc>>,
}

/// What the receiver and its releasing task both see.
#[derive(Debug, Default)]
struct Shared {
    /// Everything staged before this timestamp has been moved to the outbox table.
    released: Mutex<Option<Hlc>>,
    /// Why the receiver's database fails, until it works again: what `/health` reports.
    failing: Mutex<Option<String>>,
}

impl Shared {
    fn set_failing(&self, reason: Option<String>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }
}

/// A request of CockroachDB's webhook sink: rows, or a resolved timestamp.
#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow, default)]
    payload: Option<Vec<Row<'a>>>,
    #[serde(default)]
    length: Option<usize>,
    #[serde(default)]
    resolved: Option<String>,
}

/// One row in the `wrapped` envelope (other fields, such as `key` and `before`, are ignored).
#[derive(Deserialize)]
struct Row<'a> {
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    updated: Option<String>,
    #[serde(default)]
    resolved: Option<String>,
}

/// The outbox columns an event needs; others (`created_at`, …) are ignored.
#[derive(Deserialize)]
struct After {
    id: uuid::Uuid,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    payload: Box<RawValue>,
    #[serde(default)]
    headers: Option<Box<RawValue>>,
    #[serde(default)]
    seq: Option<i64>,
}

/// How many rows one release transaction moves.
const RELEASE_CHUNK: i64 = 1000;

impl<DB: Staging> Receiver<DB> {
    /// A receiver storing into `outbox`'s table in `pool` (created, with the staging table
    /// `<table>_changefeed`, when missing). Publish that table with a relay of the same pool
    /// and outbox. Starts the task that moves rows on as resolved timestamps arrive; it ends
    /// when the receiver is dropped.
    pub async fn open(
        pool: sqlx::Pool<DB>,
        outbox: Outbox,
        config: ReceiverConfig,
    ) -> Result<Self, crate::Error> {
        outbox.migrate(&pool).await?;
        DB::migrate_staging(&pool, outbox.table())
            .await
            .map_err(|source| {
                crate::Error::database("migrate", outbox.table(), DB::NAME, source)
            })?;
        let shared = Arc::new(Shared::default());
        let (resolved, watch) = tokio::sync::watch::channel(None);
        tokio::spawn(release_as_resolved(
            pool.clone(),
            outbox.clone(),
            config.remember,
            Arc::clone(&shared),
            watch,
        ));
        Ok(Receiver {
            pool,
            outbox,
            config,
            shared,
            resolved,
        })
    }

    /// The outbox whose table the receiver fills: give it to the relay that publishes it.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Whether the receiver's database works: `Err` with the reason while storing or releasing
    /// fails, for a health check to report.
    pub fn health(&self) -> Result<(), String> {
        match &*self
            .shared
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// The last resolved timestamp received: every row committed before it has been received.
    pub fn resolved(&self) -> Option<Hlc> {
        *self.resolved.borrow()
    }

    /// Every row committed before this timestamp has been moved to the outbox table, in order,
    /// for the relay to publish.
    pub fn released(&self) -> Option<Hlc> {
        *self
            .shared
            .released
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Handles one request: its `Authorization` header, if any, and its body. `Ok` is answered
    /// with 200; an error with [`ChangefeedError::status`].
    pub async fn receive(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<Received, ChangefeedError> {
        let result = self.receive_checked(authorization, body).await;
        if let Err(error) = &result {
            tracing::warn!(%error, status = error.status(), "changefeed request refused");
        }
        result
    }

    async fn receive_checked(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<Received, ChangefeedError> {
        if let Some(secret) = &self.config.secret {
            let given = authorization.unwrap_or("");
            if !constant_time_eq(given.as_bytes(), secret.as_bytes()) {
                return Err(ChangefeedError::Unauthorized);
            }
        }
        if body.len() > self.config.max_body_bytes {
            return Err(ChangefeedError::TooLarge {
                size: body.len(),
                cap: self.config.max_body_bytes,
            });
        }
        let (staged, mut received) = parse(body)?;
        if !staged.is_empty() {
            self.stage(&staged, &mut received).await?;
        }
        if let Some(resolved) = received.resolved {
            self.resolve(resolved);
        }
        Ok(received)
    }

    /// Makes `rows` durable within [`ReceiverConfig::answer_within`].
    async fn stage(&self, rows: &[Staged], received: &mut Received) -> Result<(), ChangefeedError> {
        let unavailable = |reason: String| {
            self.shared.set_failing(Some(reason.clone()));
            ChangefeedError::Unavailable {
                rows: rows.len(),
                reason,
            }
        };
        let within = self.config.answer_within;
        let fresh =
            match tokio::time::timeout(within, DB::stage(&self.pool, self.outbox.table(), rows))
                .await
            {
                Ok(Ok(fresh)) => fresh,
                Ok(Err(error)) => {
                    return Err(unavailable(format!(
                        "{} `{}`: {error}",
                        DB::NAME,
                        self.outbox.table()
                    )));
                }
                Err(_) => {
                    return Err(unavailable(format!(
                        "{} `{}` did not answer within {within:?}",
                        DB::NAME,
                        self.outbox.table()
                    )));
                }
            };
        self.shared.set_failing(None);
        let released = self.released();
        let mut late = 0;
        for (row, fresh) in rows.iter().zip(fresh) {
            if !fresh {
                received.replays += 1;
                continue;
            }
            received.staged += 1;
            if released.is_some_and(|released| row.updated < released.stored()) {
                late += 1;
            }
        }
        metrics::counter!("outbox_changefeed_events_total").increment(received.staged as u64);
        if late > 0 {
            tracing::warn!(
                late,
                released = %released.map(|r| r.to_string()).unwrap_or_default(),
                "changefeed rows arrived after a resolved timestamp that covered them (a replay \
                 older than the receiver remembers, or a changefeed created again): they are \
                 published with the next resolved timestamp, possibly after later events of \
                 their aggregates"
            );
        }
        Ok(())
    }

    /// Hands a resolved timestamp to the releasing task.
    fn resolve(&self, resolved: Hlc) {
        self.resolved.send_if_modified(|newest| {
            if newest.is_some_and(|newest| newest >= resolved) {
                return false;
            }
            *newest = Some(resolved);
            true
        });
        // The timestamp, not a lag computed now: a lag set only when a resolved message arrives
        // would stop growing exactly when the feed stalls. `time() - this` is the lag.
        if let Some(newest) = *self.resolved.borrow() {
            metrics::gauge!("outbox_changefeed_resolved_timestamp_seconds")
                .set(newest.wall as f64 / 1e9);
        }
    }
}

/// Parses a request: the rows to stage (each id once), and what else it said.
fn parse(body: &[u8]) -> Result<(Vec<Staged>, Received), ChangefeedError> {
    let batch: Batch<'_> =
        serde_json::from_slice(body).map_err(|e| ChangefeedError::Malformed(format!("{e}")))?;
    let mut received = Received::default();
    let newest = |text: &str, received: &mut Received| -> Result<(), ChangefeedError> {
        let resolved = Hlc::parse(text)?;
        received.resolved = Some(received.resolved.map_or(resolved, |old| old.max(resolved)));
        Ok(())
    };
    if let Some(resolved) = &batch.resolved {
        newest(resolved, &mut received)?;
    }
    let rows = match (batch.payload, batch.resolved.is_some()) {
        (Some(rows), _) => rows,
        (None, true) => return Ok((Vec::new(), received)),
        (None, false) => {
            return Err(ChangefeedError::Malformed(
                "neither `payload` nor `resolved`".to_owned(),
            ));
        }
    };
    if let Some(length) = batch.length
        && length != rows.len()
    {
        return Err(ChangefeedError::Malformed(format!(
            "`length` is {length} but `payload` holds {} rows",
            rows.len()
        )));
    }
    // Every row is checked before any is stored: a malformed request stores nothing.
    let mut staged = Vec::with_capacity(rows.len());
    let mut seen = HashSet::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        if let Some(resolved) = &row.resolved {
            newest(resolved, &mut received)?;
            continue;
        }
        let at = |problem: String| ChangefeedError::Malformed(format!("row {index}: {problem}"));
        let updated = row
            .updated
            .as_deref()
            .ok_or_else(|| at("no `updated` timestamp (create the changefeed WITH updated)".into()))
            .and_then(|text| Hlc::parse(text).map_err(|e| at(e.to_string())))?;
        let after = match row.after {
            Some(after) if after.get() != "null" => after,
            _ => {
                received.deletes += 1;
                continue;
            }
        };
        let after: After = serde_json::from_str(after.get())
            .map_err(|e| at(format!("`after` is not an outbox row: {e}")))?;
        if !seen.insert(after.id) {
            received.replays += 1;
            continue;
        }
        staged.push(Staged {
            id: after.id,
            updated: updated.stored(),
            seq: after.seq.unwrap_or(0),
            aggregate_type: after.aggregate_type,
            aggregate_id: after.aggregate_id,
            event_type: after.event_type,
            payload: unescape_html(after.payload.get()),
            headers: after
                .headers
                .filter(|headers| headers.get() != "null")
                .map(|headers| unescape_html(headers.get())),
        });
    }
    Ok((staged, received))
}

/// `json` with the escapes Go's `json.Marshal` writes for `<`, `>` and `&` (`\u003c`, `\u003e`,
/// `\u0026`) turned back into those characters: the same JSON, as the service wrote it and up
/// to six times smaller. Other escapes are kept; an escaped backslash is never taken for the
/// start of one.
fn unescape_html(json: &str) -> String {
    if !json.contains("\\u00") {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let escape = &rest[at..];
        let plain = match escape.get(..6) {
            Some(e) if e.eq_ignore_ascii_case("\\u003c") => Some('<'),
            Some(e) if e.eq_ignore_ascii_case("\\u003e") => Some('>'),
            Some(e) if e.eq_ignore_ascii_case("\\u0026") => Some('&'),
            _ => None,
        };
        match plain {
            Some(c) => {
                out.push(c);
                rest = &escape[6..];
            }
            None => {
                // Any other escape: kept whole (a backslash and the character it escapes).
                let len = escape[1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&escape[..1 + len]);
                rest = &escape[1 + len..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The releasing task: on each newer resolved timestamp, moves what it covers into the outbox
/// table, in order, a chunk per transaction; forgets old released ids now and then. Retries
/// after a failure; ends when the receiver is dropped.
async fn release_as_resolved<DB: Staging>(
    pool: sqlx::Pool<DB>,
    outbox: Outbox,
    remember: Duration,
    shared: Arc<Shared>,
    mut watch: tokio::sync::watch::Receiver<Option<Hlc>>,
) {
    let mut failures = 0_u32;
    let mut forgotten_at: Option<std::time::Instant> = None;
    let backoff = crate::relay::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let target = *watch.borrow_and_update();
        let done = *shared.released.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(target) = target.filter(|target| done.is_none_or(|done| done < *target)) {
            match release_all(&pool, &outbox, target).await {
                Ok(moved) => {
                    failures = 0;
                    shared.set_failing(None);
                    *shared.released.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
                    if moved > 0 {
                        tracing::debug!(moved, resolved = %target, "changefeed rows released");
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let reason = format!("{} `{}`: {error}", DB::NAME, outbox.table());
                    tracing::warn!(%reason, "releasing changefeed rows failed; retrying");
                    shared.set_failing(Some(reason));
                    tokio::time::sleep(backoff.delay(failures)).await;
                    continue;
                }
            }
        }
        if forgotten_at.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
            let cutoff = unix_seconds()
                .saturating_sub(i64::try_from(remember.as_secs()).unwrap_or(i64::MAX));
            match DB::forget_released(&pool, outbox.table(), cutoff).await {
                Ok(_) => forgotten_at = Some(std::time::Instant::now()),
                Err(error) => tracing::warn!(%error, "forgetting old changefeed ids failed"),
            }
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

/// Moves every staged row before `before`, chunk by chunk.
async fn release_all<DB: Staging>(
    pool: &sqlx::Pool<DB>,
    outbox: &Outbox,
    before: Hlc,
) -> Result<usize, sqlx::Error> {
    let mut moved = 0;
    loop {
        let chunk =
            DB::release(pool, outbox, before.stored(), RELEASE_CHUNK, unix_seconds()).await?;
        moved += chunk;
        if (chunk as i64) < RELEASE_CHUNK {
            return Ok(moved);
        }
    }
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Compares without stopping at the first difference, so that timing tells nothing of the
/// secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_timestamps_parse_and_order_by_wall_then_logical() {
        let a = Hlc::parse("1733300000000000000.0000000000").unwrap();
        let b = Hlc::parse("1733300000000000000.0000000001").unwrap();
        let c = Hlc::parse("1733300000000000001").unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "1733300000000000000.0000000000");
        for bad in ["", ".1", "12a.0", "1.x", "-1.0", "1.2.3"] {
            assert!(
                matches!(Hlc::parse(bad), Err(ChangefeedError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn go_html_escapes_are_undone_and_nothing_else() {
        assert_eq!(
            unescape_html(r#"{"s":"\u003cb\u003eTom \u0026 Jerry\u003C/b\u003E"}"#),
            r#"{"s":"<b>Tom & Jerry</b>"}"#
        );
        // An escaped backslash followed by `u003c` is text, not an escape.
        assert_eq!(
            unescape_html(r#"{"s":"\\u003c \" \n \u00e9"}"#),
            r#"{"s":"\\u003c \" \n \u00e9"}"#
        );
        assert_eq!(unescape_html(r#"{"n":1}"#), r#"{"n":1}"#);
        assert_eq!(unescape_html("\\"), "\\");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
