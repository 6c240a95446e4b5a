//! NATS JetStream sink (feature `nats`): publishes each event to a subject (default
//! `<aggregate_type>.<event_type>`) with publisher acknowledgements, pipelined — the whole batch
//! is sent before the first ack is awaited. The event id travels as `Nats-Msg-Id`, so the
//! stream's duplicate window drops a redelivered event.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::relay::Relay;
//! use outbox::sinks::nats::NatsSink;
//!
//! let sink = NatsSink::connect("nats://127.0.0.1:4222").await?;
//! Relay::builder(pool, sink).build().run(std::future::pending()).await;
//! # Ok(()) }
//! ```

use std::str::FromStr;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use async_nats::{HeaderMap, HeaderName};

use super::{Envelope, Routing, SetupError};
use crate::message::Message;
use crate::sink::{Delivery, Destination, Sink, SinkError};

const SINK: &str = "NATS JetStream";

/// Publishes events to NATS JetStream; see the [module](self) documentation.
#[derive(Debug, Clone)]
pub struct NatsSink {
    jetstream: jetstream::Context,
    routing: Routing,
    envelope: Envelope,
    /// The server's host and port, for traces.
    server: Option<(String, u16)>,
}

impl NatsSink {
    /// Connects to the server at `url` and checks that JetStream is enabled there. Fails at once
    /// (no retry) when the server is unreachable; once connected, the client reconnects by
    /// itself and unacknowledged events are retried by the relay.
    pub async fn connect(url: &str) -> Result<Self, SetupError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|error| {
                use async_nats::ConnectErrorKind as Kind;
                let problem = format!("cannot connect to {}: {error}", super::redacted(url));
                match error.kind() {
                    Kind::Io | Kind::TimedOut | Kind::Dns | Kind::MaxReconnects => {
                        SetupError::unreachable(SINK, problem)
                    }
                    Kind::ServerParse
                    | Kind::Authentication
                    | Kind::AuthorizationViolation
                    | Kind::Tls => SetupError::new(SINK, problem),
                }
            })?;
        let mut sink = Self::new(client).await?;
        if let Some(server) = super::server_of(url, 4222) {
            sink.server = Some(server);
        }
        Ok(sink)
    }

    /// A sink over a client you configured (credentials, TLS, ...). Checks that JetStream is
    /// enabled on the server.
    pub async fn new(client: async_nats::Client) -> Result<Self, SetupError> {
        // A server without JetStream has no responder for its API.
        client
            .request("$JS.API.INFO", bytes::Bytes::new())
            .await
            .map_err(|error| {
                SetupError::new(
                    SINK,
                    format!(
                        "JetStream is not available on the server ({error}); start nats-server with -js"
                    ),
                )
            })?;
        let info = client.server_info();
        let jetstream = jetstream::new(client);
        Ok(NatsSink {
            jetstream,
            routing: Routing::template("{aggregate_type}.{event_type}")?,
            envelope: Envelope::Payload,
            server: Some((info.host, info.port)),
        })
    }

    /// Which subject each event goes to (default `{aggregate_type}.{event_type}`). A stream
    /// must capture these subjects.
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// The body of each message (default: the payload).
    pub fn envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }

    /// The JetStream context, e.g. to create the stream the events go to.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    fn publication(&self, message: &Message) -> PublishMessage {
        let mut headers = HeaderMap::new();
        for (name, value) in super::headers(message) {
            match HeaderName::from_str(&name) {
                Ok(name) => headers.insert(name, value.as_str()),
                Err(_) => tracing::debug!(header = %name, "not a valid NATS header name; left out"),
            }
        }
        headers.insert("Content-Type", self.envelope.content_type());
        PublishMessage::build()
            .payload(self.envelope.body(message).into())
            .headers(headers)
            .message_id(message.id.to_string())
    }
}

fn failure(subject: &str, error: &jetstream::context::PublishError) -> SinkError {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => {
            SinkError::permanent(format!("{subject}: larger than the server's max_payload"))
        }
        PublishErrorKind::StreamNotFound => SinkError::transient(format!(
            "{subject}: no JetStream stream captures this subject; create one"
        )),
        _ => SinkError::transient(format!("{subject}: {error}")),
    }
}

impl Sink for NatsSink {
    fn destination(&self, message: &Message) -> Option<Destination> {
        Some(
            self.routing
                .destination_on("nats", message)
                .with_server(self.server.as_ref()),
        )
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        // Send everything, then collect the acks: one round trip per batch, not per event.
        let mut pending = Vec::with_capacity(batch.len());
        for message in batch {
            let subject = self.routing.destination(message);
            let sent = self
                .jetstream
                .send_publish(subject.clone(), self.publication(message))
                .await;
            pending.push((subject, sent));
        }
        let mut results = Vec::with_capacity(batch.len());
        for (subject, sent) in pending {
            results.push(match sent {
                Ok(ack) => ack
                    .await
                    .map(drop)
                    .map_err(|error| failure(&subject, &error)),
                Err(error) => Err(failure(&subject, &error)),
            });
        }
        results
    }
}
