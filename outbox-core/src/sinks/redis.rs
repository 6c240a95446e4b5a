//! Redis Streams sink (feature `redis`): one `XADD` per event to a stream (default: the
//! aggregate type), the whole batch in one pipelined round trip. Each entry has the
//! [fields] `id` (event id, the consumers' dedup key), `event_type`,
//! `aggregate_type`, `aggregate_id`, `payload` (the body), `content_type`, and `headers` (JSON
//! text) when headers were recorded — the names of the webhook's JSON elements. Streams keep
//! per-key order, so per-aggregate order holds when an aggregate's events go to one stream.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::relay::Relay;
//! use outbox::sinks::{Routing, redis::RedisSink};
//!
//! let sink = RedisSink::connect("redis://127.0.0.1:6379")
//!     .await?
//!     .routing(Routing::template("events:{aggregate_type}")?)
//!     .max_len(1_000_000); // trim each stream, approximately
//! Relay::builder(pool, sink).build().run(std::future::pending()).await;
//! # Ok(()) }
//! ```

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Envelope, Routing, SetupError, fields};
use crate::message::Message;
use crate::sink::{Delivery, Destination, Sink, SinkError};

const SINK: &str = "Redis Streams";

/// Appends events to Redis streams; see the [module](self) documentation.
#[derive(Clone)]
pub struct RedisSink {
    connection: ConnectionManager,
    routing: Routing,
    envelope: Envelope,
    max_len: Option<usize>,
    /// The server's host and port, for traces.
    server: Option<(String, u16)>,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("routing", &self.routing)
            .field("envelope", &self.envelope)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS) and
    /// checks the server answers. Once connected, a lost connection is re-established by itself
    /// and the batches it failed are retried by the relay.
    pub async fn connect(url: &str) -> Result<Self, SetupError> {
        let client = redis::Client::open(url)
            .map_err(|error| SetupError::new(SINK, format!("invalid URL {url:?}: {error}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2);
        let shown = super::redacted(url);
        let failed = |problem: String, error: &redis::RedisError| {
            if error.is_io_error() || error.is_timeout() || error.is_connection_refusal() {
                SetupError::unreachable(SINK, problem)
            } else {
                SetupError::new(SINK, problem)
            }
        };
        let mut connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|error| failed(format!("cannot connect to {shown}: {error}"), &error))?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map_err(|error| failed(format!("{shown} does not answer PING: {error}"), &error))?;
        Ok(RedisSink {
            connection,
            routing: Routing::default(),
            envelope: Envelope::Payload,
            max_len: None,
            server: super::server_of(url, 6379),
        })
    }

    /// Which stream each event goes to (default: its aggregate type).
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// The `payload` field of each entry (default: the payload as recorded).
    pub fn envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }

    /// Trims each stream to about `entries` (`XADD ... MAXLEN ~`). Default: no trimming.
    pub fn max_len(mut self, entries: usize) -> Self {
        self.max_len = Some(entries);
        self
    }
}

impl Sink for RedisSink {
    fn destination(&self, message: &Message) -> Option<Destination> {
        Some(
            self.routing
                .destination_on("redis", message)
                .with_server(self.server.as_ref()),
        )
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        let mut pipe = redis::pipe();
        for message in batch {
            let command = pipe.cmd("XADD").arg(self.routing.destination(message));
            if let Some(max_len) = self.max_len {
                command.arg("MAXLEN").arg("~").arg(max_len);
            }
            command
                .arg("*")
                .arg(fields::ID)
                .arg(message.id.to_string())
                .arg(fields::EVENT_TYPE)
                .arg(&message.event_type)
                .arg(fields::AGGREGATE_TYPE)
                .arg(&message.aggregate_type)
                .arg(fields::AGGREGATE_ID)
                .arg(&message.aggregate_id)
                .arg(fields::PAYLOAD)
                .arg(self.envelope.body(message))
                .arg(fields::CONTENT_TYPE)
                .arg(self.envelope.content_type());
            if let Some(headers) = &message.headers {
                command.arg(fields::HEADERS).arg(headers);
            }
        }
        let mut connection = self.connection.clone();
        match pipe.query_async::<Vec<String>>(&mut connection).await {
            Ok(_) => batch.iter().map(|_| Ok(())).collect(),
            Err(error) => {
                // A pipeline fails as a whole: every entry is retried (some may be appended
                // twice; consumers deduplicate on `id`).
                let error = SinkError::transient(format!("XADD failed: {error}"));
                batch.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }
}
