//! Where the relay delivers events: the [`Sink`] trait, and sinks that stay in the process.

use std::future::Future;

use tokio::sync::mpsc;

use crate::message::Message;

/// Why a sink could not deliver a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    message: String,
    permanent: bool,
}

impl SinkError {
    /// A failure worth retrying (broker down, timeout): retried with backoff until the attempts
    /// run out, then dead-lettered.
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that will never succeed (the message is refused as malformed, forbidden, too
    /// large): dead-lettered at once, without retries.
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            permanent: true,
        }
    }

    /// True for [`SinkError::permanent`].
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

/// The outcome of delivering one message.
pub type Delivery = Result<(), SinkError>;

/// Where a sink delivers a message, as the relay's traces (OpenTelemetry's messaging
/// attributes) and the event catalog name it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Destination {
    /// The messaging system, as OpenTelemetry's `messaging.system` names it: `kafka`,
    /// `rabbitmq`, `nats`, `redis`, `mqtt`, or `webhook` for HTTP.
    pub system: &'static str,
    /// The topic, subject, stream or exchange the message goes to (a webhook's URL, without its
    /// credentials).
    pub name: String,
    /// RabbitMQ: the routing key the message is published with.
    pub routing_key: Option<String>,
    /// The routing template the name was made from, when the name holds the aggregate id
    /// (`bank.{aggregate_id}`): OpenTelemetry's `messaging.destination.template`, and the span
    /// name in place of a name with as many values as there are aggregates.
    pub template: Option<String>,
    /// The broker's (or receiver's) host as configured: OpenTelemetry's `server.address`.
    pub server_address: Option<String>,
    /// Its port: OpenTelemetry's `server.port`.
    pub server_port: Option<u16>,
}

impl Destination {
    /// `name` on `system`, without a routing key.
    pub fn new(system: &'static str, name: impl Into<String>) -> Self {
        Destination {
            system,
            name: name.into(),
            routing_key: None,
            template: None,
            server_address: None,
            server_port: None,
        }
    }

    /// With the routing template the name was made from (see [`Destination::template`]).
    pub fn with_template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }

    /// With the server the message is sent to: `(host, port)`, as configured.
    pub fn with_server(mut self, server: Option<&(String, u16)>) -> Self {
        if let Some((address, port)) = server {
            self.server_address = Some(address.clone());
            self.server_port = Some(*port);
        }
        self
    }

    /// With the routing key the message is published with (RabbitMQ).
    pub fn with_routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = Some(routing_key.into());
        self
    }
}

/// A destination for outbox events: a broker, a webhook, an in-process handler.
///
/// With the default [`Ordering::PerAggregate`](super::Ordering::PerAggregate), the relay calls
/// [`Sink::publish`] with batches in which no aggregate appears twice, so the sink may deliver
/// the messages concurrently (pipelined, in parallel) without breaking per-aggregate order —
/// unless the sink [keeps order](Sink::keeps_order), in which case an aggregate's consecutive
/// events come in one batch. With [`Ordering::Unordered`](super::Ordering::Unordered) a batch is
/// whatever was claimed. It returns one [`Delivery`] per message, in the batch's order. A
/// message reported delivered is removed from the outbox; a failed one is retried later and, by
/// default, holds back the later events of its aggregate.
pub trait Sink: Send + Sync + 'static {
    /// Delivers `batch`; one result per message, in order.
    fn publish(&self, batch: &[Message]) -> impl Future<Output = Vec<Delivery>> + Send;

    /// Whether the sink delivers a batch in its order and, once a message fails, delivers no
    /// later message of the same aggregate from that batch (default false).
    ///
    /// A sink that says so receives, under [`Ordering::PerAggregate`](super::Ordering), an
    /// aggregate's consecutive events together, in order — 500 events of one aggregate are one
    /// batch instead of 500 round trips. The results it reports for an aggregate's messages
    /// after its first failure are not counted as attempts: those messages are released
    /// untouched and follow the failed one when it is retried.
    fn keeps_order(&self) -> bool {
        false
    }

    /// Where `message` goes (default: not said). The relay names it in the span it starts for
    /// each message, and the event catalog in its channels.
    fn destination(&self, message: &Message) -> Option<Destination> {
        let _ = message;
        None
    }
}

/// Delivers every message to a [`tokio::sync::mpsc`] channel: a relay without a broker, for
/// services that consume their own events, and for tests.
///
/// ```
/// use outbox::relay::ChannelSink;
///
/// let (sink, mut receiver) = ChannelSink::new(1024);
/// # drop((sink, receiver.try_recv()));
/// ```
///
/// A full channel applies back-pressure to the relay; a closed one fails the delivery
/// (transient), so events stay in the outbox until a receiver exists again. Messages are sent
/// one after the other, so an aggregate's consecutive events travel in one batch
/// ([`Sink::keeps_order`]).
#[derive(Debug, Clone)]
pub struct ChannelSink {
    sender: mpsc::Sender<Message>,
}

impl ChannelSink {
    /// A sink and the receiver of its messages, with room for `capacity` messages.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Message>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (ChannelSink { sender }, receiver)
    }

    /// A sink feeding an existing channel.
    pub fn from_sender(sender: mpsc::Sender<Message>) -> Self {
        ChannelSink { sender }
    }
}

impl Sink for ChannelSink {
    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        let mut results = Vec::with_capacity(batch.len());
        for message in batch {
            results.push(
                self.sender
                    .send(message.clone())
                    .await
                    .map_err(|_| SinkError::transient("the channel's receiver is closed")),
            );
        }
        results
    }

    /// A send fails only once the receiver is closed, and then every later one fails too.
    fn keeps_order(&self) -> bool {
        true
    }
}

/// Delivers every message by calling an async function: the simplest way to plug in anything.
///
/// ```
/// use outbox::relay::{HandlerSink, Message, SinkError};
///
/// let sink = HandlerSink::new(|message: Message| async move {
///     if message.event_type == "Poison" {
///         return Err(SinkError::permanent("refused"));
///     }
///     println!("{} {}", message.event_type, message.payload);
///     Ok(())
/// });
/// # drop(sink);
/// ```
///
/// The messages of one batch are handled concurrently: with the default ordering they belong
/// to different aggregates, so per-aggregate order holds.
pub struct HandlerSink<F> {
    handler: F,
}

impl<F> HandlerSink<F> {
    /// Wraps `handler`.
    pub fn new(handler: F) -> Self {
        HandlerSink { handler }
    }
}

impl<F> std::fmt::Debug for HandlerSink<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerSink").finish_non_exhaustive()
    }
}

impl<F, Fut> Sink for HandlerSink<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Delivery> + Send,
{
    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        let calls = batch.iter().map(|message| (self.handler)(message.clone()));
        futures_util::future::join_all(calls).await
    }
}
