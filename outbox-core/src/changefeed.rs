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

mod receiver;
mod request;
mod setup;
mod staging;

pub use self::receiver::Receiver;

#[doc(hidden)]
pub use self::staging::{Staged, Staging, Timestamp};

pub use self::setup::{
    CockroachVersion, ESCAPING_GROWTH, FLUSH_MESSAGES, ROW_OVERHEAD, Setup, StatementError,
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
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
