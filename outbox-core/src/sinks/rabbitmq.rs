//! RabbitMQ sink (feature `rabbitmq`), with lapin: each event is published as a persistent
//! message to an exchange (default: named after the aggregate type, a durable `topic` exchange
//! the sink declares) with a routing key (default: the event type), and the batch's
//! [publisher confirms](https://www.rabbitmq.com/docs/confirms) are awaited together: an event
//! counts as delivered once the broker has taken responsibility for it.
//!
//! Messages are published `mandatory` by default: a message that no queue is bound to receive
//! is returned by the broker and counts as a failed delivery — retried with backoff, then a
//! dead letter whose last error is the broker's reason (`312 NO_ROUTE`) — so that "nobody
//! listens yet" never becomes a silent loss. For a fire-and-forget exchange where dropping
//! unroutable messages is intended, opt out with [`RabbitMqSink::mandatory`]`(false)`.
//!
//! Each message has `message_id` = event id (the consumers' dedup key), `type` = event type,
//! `content_type`, delivery mode 2 (persistent), and the [common headers](super::headers) in
//! its header table. A queue keeps the order in which messages were published, so per-aggregate
//! order holds for a consumer of one queue.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::relay::Relay;
//! use outbox::sinks::{Routing, rabbitmq::RabbitMqSink};
//!
//! let sink = RabbitMqSink::connect("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .await?
//!     .exchange(Routing::template("bank")?)                       // one exchange
//!     .routing_key(Routing::template("{aggregate_type}.{event_type}")?);
//! Relay::builder(pool, sink).build().run(std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! A lost connection is not fatal: the batch it interrupted fails (transiently, so the relay
//! retries it) and the next batch connects again.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use super::{Envelope, Routing, SetupError, headers};
use crate::message::Message;
use crate::sink::{Delivery, Destination, Sink, SinkError};

pub use lapin;

const SINK: &str = "RabbitMQ";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes events to RabbitMQ with publisher confirms; see the [module](self) documentation.
pub struct RabbitMqSink {
    uri: String,
    exchange: Routing,
    routing_key: Routing,
    envelope: Envelope,
    declare: bool,
    mandatory: bool,
    state: Mutex<State>,
}

/// The open channel (if any) and the exchanges already declared on this connection.
struct State {
    link: Option<(Connection, Channel)>,
    declared: HashSet<String>,
}

impl std::fmt::Debug for RabbitMqSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSink")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("envelope", &self.envelope)
            .field("declare", &self.declare)
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

/// Opens a connection and a channel in confirm mode; the error says whether the broker was
/// unreachable or refused.
async fn open(uri: &str) -> Result<(Connection, Channel), SetupError> {
    let shown = super::redacted(uri);
    let connect = async {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>((connection, channel))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(link)) => Ok(link),
        Ok(Err(error)) => {
            let problem = format!("cannot connect to {shown}: {error}");
            Err(match error.kind() {
                lapin::ErrorKind::IOError(_) | lapin::ErrorKind::MissingHeartbeatError => {
                    SetupError::unreachable(SINK, problem)
                }
                _ => SetupError::new(SINK, problem),
            })
        }
        Err(_) => Err(SetupError::unreachable(
            SINK,
            format!(
                "cannot connect to {shown}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
        )),
    }
}

impl RabbitMqSink {
    /// Connects to `uri` (`amqp://user:password@host:port/vhost`, `amqps://` for TLS; the
    /// default vhost `/` is written `%2f`) and opens a channel in confirm mode. Fails when the
    /// broker is unreachable or refuses the credentials.
    pub async fn connect(uri: &str) -> Result<Self, SetupError> {
        let link = open(uri).await?;
        Ok(RabbitMqSink {
            uri: uri.to_owned(),
            exchange: Routing::default(),
            routing_key: Routing::event_type(),
            envelope: Envelope::Payload,
            declare: true,
            mandatory: true,
            state: Mutex::new(State {
                link: Some(link),
                declared: HashSet::new(),
            }),
        })
    }

    /// Which exchange each event is published to (default: its aggregate type).
    pub fn exchange(mut self, exchange: Routing) -> Self {
        self.exchange = exchange;
        self
    }

    /// The routing key of each event (default: its event type).
    pub fn routing_key(mut self, routing_key: Routing) -> Self {
        self.routing_key = routing_key;
        self
    }

    /// The message body (default: the payload as recorded).
    pub fn envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }

    /// Whether the sink declares each exchange (durable, `topic`) before its first use; default
    /// true. Turn it off when the exchanges are managed elsewhere: publishing to a missing
    /// exchange then fails and the events are retried.
    pub fn declare_exchanges(mut self, declare: bool) -> Self {
        self.declare = declare;
        self
    }

    /// Whether messages are published with the `mandatory` flag (default true): a message no
    /// queue is bound to receive is returned by the broker and counts as a failed delivery
    /// (retried, then dead-lettered with the broker's reason) instead of being dropped. Pass
    /// false for an exchange where unroutable messages are meant to be dropped: the broker then
    /// confirms them and they leave the outbox unseen.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    fn properties(&self, message: &Message) -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, value) in headers(message) {
            table.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        BasicProperties::default()
            .with_message_id(message.id.to_string().into())
            .with_type(message.event_type.clone().into())
            .with_content_type(self.envelope.content_type().into())
            .with_delivery_mode(2)
            .with_headers(table)
    }

    /// Publishes `batch` on `channel`, declaring new exchanges first; an `Err` means the channel
    /// failed and every message not confirmed yet is to be retried.
    async fn publish_on(
        &self,
        channel: &Channel,
        declared: &mut HashSet<String>,
        batch: &[Message],
    ) -> Result<Vec<Delivery>, lapin::Error> {
        let mut confirms = Vec::with_capacity(batch.len());
        for message in batch {
            let exchange = self.exchange.destination(message);
            if self.declare && !declared.contains(&exchange) {
                channel
                    .exchange_declare(
                        exchange.as_str().into(),
                        lapin::ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            durable: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                declared.insert(exchange.clone());
            }
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    self.routing_key.destination(message).into(),
                    BasicPublishOptions {
                        mandatory: self.mandatory,
                        ..BasicPublishOptions::default()
                    },
                    self.envelope.body(message).as_bytes(),
                    self.properties(message),
                )
                .await?;
            confirms.push(confirm);
        }
        let mut results = Vec::with_capacity(batch.len());
        for confirm in confirms {
            results.push(match confirm.await? {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                    Err(SinkError::transient(format!(
                        "returned by the broker: {} {}",
                        returned.reply_code, returned.reply_text
                    )))
                }
                Confirmation::Nack(None) => Err(SinkError::transient(
                    "the broker refused the message (nack)",
                )),
                Confirmation::NotRequested => {
                    Err(SinkError::transient("the channel is not in confirm mode"))
                }
            });
        }
        Ok(results)
    }
}

impl Sink for RabbitMqSink {
    fn destination(&self, message: &Message) -> Option<Destination> {
        Some(
            self.exchange
                .destination_on("rabbitmq", message)
                .with_routing_key(self.routing_key.destination(message))
                .with_server(super::server_of(&self.uri, 5672).as_ref()),
        )
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        let mut state = self.state.lock().await;
        let healthy = |(connection, channel): &(Connection, Channel)| {
            connection.status().connected() && channel.status().connected()
        };
        let (connection, channel) = match state.link.take().filter(healthy) {
            Some(link) => link,
            None => {
                state.declared.clear();
                match open(&self.uri).await {
                    Ok(link) => link,
                    Err(error) => {
                        let error =
                            SinkError::transient(format!("cannot reconnect: {}", error.problem));
                        return batch.iter().map(|_| Err(error.clone())).collect();
                    }
                }
            }
        };
        match self.publish_on(&channel, &mut state.declared, batch).await {
            Ok(results) => {
                state.link = Some((connection, channel));
                results
            }
            Err(error) => {
                // The channel or connection failed: the next batch opens a new one. Messages
                // confirmed before the failure may be published again; consumers deduplicate on
                // the message id.
                tracing::warn!(%error, "RabbitMQ channel failed; reconnecting on the next batch");
                let error = SinkError::transient(format!("RabbitMQ channel failed: {error}"));
                batch.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }
}
