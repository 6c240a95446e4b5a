//! MQTT sink (feature `mqtt`), with rumqttc over MQTT 5: each event is published with QoS 1
//! (at least once) to a topic (default: `{aggregate_type}/{event_type}`), and counts as
//! delivered when the broker's `PUBACK` for it arrives. A batch's publishes are in flight
//! together, not one round trip each.
//!
//! MQTT 5 user properties carry the [common headers](super::headers) (event id, event type,
//! aggregate type and id, recorded trace context); the content type is a publish property. A
//! broker forwards one client's QoS 1 messages of a topic in the order they were published, so
//! per-aggregate order holds for a subscriber of that topic.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::relay::Relay;
//! use outbox::sinks::{Routing, mqtt::MqttSink};
//!
//! let sink = MqttSink::connect("mqtt://127.0.0.1:1883")
//!     .await?
//!     .routing(Routing::template("bank/{aggregate_type}/{aggregate_id}")?);
//! Relay::builder(pool, sink).build().run(std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! The sink opens a clean session; a lost connection fails the batch it interrupted (the relay
//! retries it) and the next batch connects again.
//!
//! On Mosquitto, set `set_tcp_nodelay true` in `mosquitto.conf`: by default the broker writes
//! its `PUBACK`s with Nagle's algorithm, and a publisher that waits for them, as the sink does
//! with each batch, gets them some 40 ms late (about 10,000 events/s instead of 34,000 on the
//! benchmark machine, BENCHMARKS.md).

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{Mutex, mpsc};

use super::{Envelope, Routing, SetupError, headers};
use crate::message::Message;
use crate::sink::{Delivery, Destination, Sink, SinkError};

pub use rumqttc;

const SINK: &str = "MQTT";
const REQUEST_CAPACITY: usize = 1024;

/// Publishes events to an MQTT broker with QoS 1; see the [module](self) documentation.
pub struct MqttSink {
    options: MqttOptions,
    routing: Routing,
    envelope: Envelope,
    ack_timeout: Duration,
    link: Mutex<Option<Link>>,
}

impl std::fmt::Debug for MqttSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSink")
            .field("broker", &self.options.broker_address())
            .field("routing", &self.routing)
            .field("envelope", &self.envelope)
            .field("ack_timeout", &self.ack_timeout)
            .finish_non_exhaustive()
    }
}

/// What the task driving the event loop reports.
enum Report {
    /// A publish left with this packet id.
    Sent(u16),
    /// The broker acknowledged the publish with this packet id.
    Acked(u16, PubAckReason),
    /// The connection failed; the task has stopped.
    Lost(String),
}

/// One connection: the client, and the reports of the task polling its event loop (which also
/// sends the keep-alive pings between batches).
struct Link {
    client: AsyncClient,
    reports: mpsc::UnboundedReceiver<Report>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects and waits for the CONNACK; the error says whether the broker was unreachable or
/// refused the connection.
async fn open(options: &MqttOptions) -> Result<Link, SetupError> {
    let (client, mut events) = AsyncClient::new(options.clone(), REQUEST_CAPACITY);
    let timeout = Duration::from_secs(options.connection_timeout()) + Duration::from_secs(1);
    let connected = tokio::time::timeout(timeout, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
    })
    .await;
    match connected {
        Ok(Ok(())) => {}
        Ok(Err(
            error @ (rumqttc::v5::ConnectionError::ConnectionRefused(_)
            | rumqttc::v5::ConnectionError::Tls(_)),
        )) => return Err(SetupError::new(SINK, error.to_string())),
        Ok(Err(error)) => return Err(SetupError::unreachable(SINK, error.to_string())),
        Err(_) => {
            return Err(SetupError::unreachable(
                SINK,
                format!("no CONNACK within {}s", timeout.as_secs()),
            ));
        }
    }
    let (report, reports) = mpsc::unbounded_channel();
    let task = tokio::spawn(drive(events, report));
    Ok(Link {
        client,
        reports,
        task,
    })
}

async fn drive(mut events: EventLoop, report: mpsc::UnboundedSender<Report>) {
    loop {
        let next = match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Report::Sent(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Report::Acked(ack.pkid, ack.reason),
            Ok(Event::Incoming(Packet::Disconnect(disconnect))) => Report::Lost(format!(
                "the broker disconnected: {:?}",
                disconnect.reason_code
            )),
            Ok(_) => continue,
            Err(error) => Report::Lost(error.to_string()),
        };
        let lost = matches!(next, Report::Lost(_));
        if report.send(next).is_err() || lost {
            return;
        }
    }
}

impl MqttSink {
    /// Connects to `url` (`mqtt://[user:password@]host[:port][?client_id=…&keep_alive_secs=…]`)
    /// and waits for the broker's `CONNACK`. Without a `client_id`, a unique one is made up.
    /// For TLS or other settings, build the options yourself and use [`MqttSink::with_options`].
    pub async fn connect(url: &str) -> Result<Self, SetupError> {
        let mut url = url.to_owned();
        if !url.contains("client_id=") {
            let separator = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{separator}client_id=outbox-{}", uuid::Uuid::now_v7());
        }
        let options = MqttOptions::parse_url(&url)
            .map_err(|error| SetupError::new(SINK, format!("invalid URL {url:?}: {error}")))?;
        Self::with_options(options).await
    }

    /// Connects with rumqttc's `options` (re-exported as [`rumqttc`]), e.g. for TLS. The session
    /// is made clean (delivery is tracked per batch, not left to the session) and `TCP_NODELAY`
    /// is set.
    pub async fn with_options(mut options: MqttOptions) -> Result<Self, SetupError> {
        options.set_clean_start(true);
        // Without TCP_NODELAY, Nagle's algorithm holds a small batch's last packets back until
        // the broker's delayed ACK: some 40 ms per batch.
        let mut network = options.network_options();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let link = open(&options).await.map_err(|error| {
            let (host, port) = options.broker_address();
            SetupError {
                problem: format!("cannot connect to {host}:{port}: {}", error.problem),
                ..error
            }
        })?;
        Ok(MqttSink {
            options,
            routing: Routing::template("{aggregate_type}/{event_type}")
                .map_err(|error| SetupError::new(SINK, error.problem))?,
            envelope: Envelope::Payload,
            ack_timeout: Duration::from_secs(30),
            link: Mutex::new(Some(link)),
        })
    }

    /// Which topic each event goes to (default: `{aggregate_type}/{event_type}`).
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// The message body (default: the payload as recorded).
    pub fn envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }

    /// How long a batch waits for its acknowledgements before it fails and the connection is
    /// opened again (default 30 s).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    fn properties(&self, message: &Message) -> PublishProperties {
        PublishProperties {
            content_type: Some(self.envelope.content_type().to_owned()),
            payload_format_indicator: Some(1), // UTF-8
            user_properties: headers(message),
            ..PublishProperties::default()
        }
    }

    /// Publishes `batch` over `link` and fills in `results` as the acknowledgements arrive; an
    /// `Err` means the link is broken and every message without a result is to be retried.
    async fn exchange(
        &self,
        link: &mut Link,
        batch: &[Message],
        results: &mut [Option<Delivery>],
    ) -> Result<(), String> {
        // Topics MQTT refuses fail alone, at once; the others are published in batch order.
        let mut order = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            let topic = self.routing.destination(message);
            if topic.is_empty() || topic.contains(['+', '#', '\0']) {
                results[index] = Some(Err(SinkError::permanent(format!(
                    "{topic:?} is not a valid MQTT topic to publish to"
                ))));
            } else {
                order.push((index, topic));
            }
        }
        let Link {
            client, reports, ..
        } = link;
        let send = async {
            for (index, topic) in &order {
                let message = &batch[*index];
                client
                    .publish_with_properties(
                        topic.as_str(),
                        QoS::AtLeastOnce,
                        false,
                        self.envelope.body(message),
                        self.properties(message),
                    )
                    .await
                    .map_err(|error| format!("cannot queue a publish: {error}"))?;
            }
            Ok::<(), String>(())
        };
        tokio::pin!(send);
        let deadline = tokio::time::sleep(self.ack_timeout);
        tokio::pin!(deadline);
        let mut queued = false;
        let mut sent = 0;
        let mut acked = 0;
        let mut in_flight = HashMap::new();
        while acked < order.len() {
            tokio::select! {
                result = &mut send, if !queued => {
                    queued = true;
                    result?;
                }
                report = reports.recv() => match report {
                    Some(Report::Sent(pkid)) => {
                        if let Some((index, _)) = order.get(sent) {
                            in_flight.insert(pkid, *index);
                            sent += 1;
                        }
                    }
                    Some(Report::Acked(pkid, reason)) => {
                        if let Some(index) = in_flight.remove(&pkid) {
                            results[index] = Some(delivery(reason));
                            acked += 1;
                        }
                    }
                    Some(Report::Lost(error)) => return Err(error),
                    None => return Err("the MQTT event loop stopped".to_owned()),
                },
                () = &mut deadline => {
                    return Err(format!(
                        "{} of {} publishes unacknowledged after {:?}",
                        order.len() - acked,
                        order.len(),
                        self.ack_timeout
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The outcome a `PUBACK` reason code stands for.
fn delivery(reason: PubAckReason) -> Delivery {
    match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
        PubAckReason::NotAuthorized
        | PubAckReason::TopicNameInvalid
        | PubAckReason::PayloadFormatInvalid => Err(SinkError::permanent(format!(
            "the broker refused the message: {reason:?}"
        ))),
        other => Err(SinkError::transient(format!(
            "the broker did not take the message: {other:?}"
        ))),
    }
}

impl Sink for MqttSink {
    fn destination(&self, message: &Message) -> Option<Destination> {
        let (host, port) = self.options.broker_address();
        Some(
            self.routing
                .destination_on("mqtt", message)
                .with_server(Some(&(host, port))),
        )
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        let mut guard = self.link.lock().await;
        let mut link = match guard.take() {
            Some(mut link) => {
                // Reports left from the last batch: only a lost connection matters.
                let mut lost = false;
                while let Ok(report) = link.reports.try_recv() {
                    lost |= matches!(report, Report::Lost(_));
                }
                if lost { None } else { Some(link) }
            }
            None => None,
        };
        if link.is_none() {
            match open(&self.options).await {
                Ok(fresh) => link = Some(fresh),
                Err(error) => {
                    let error =
                        SinkError::transient(format!("cannot reconnect: {}", error.problem));
                    return batch.iter().map(|_| Err(error.clone())).collect();
                }
            }
        }
        let Some(mut link) = link else {
            return Vec::new();
        };
        let mut results: Vec<Option<Delivery>> = vec![None; batch.len()];
        let outcome = self.exchange(&mut link, batch, &mut results).await;
        let failure = match outcome {
            Ok(()) => {
                *guard = Some(link);
                None
            }
            Err(error) => {
                tracing::warn!(%error, "MQTT connection failed; reconnecting on the next batch");
                Some(SinkError::transient(error))
            }
        };
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(failure
                        .clone()
                        .unwrap_or_else(|| SinkError::transient("no acknowledgement")))
                })
            })
            .collect()
    }
}
