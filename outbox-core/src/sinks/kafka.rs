//! Kafka sink (feature `kafka`), with rdkafka (librdkafka, built from source): each event is
//! produced to a topic (default: the aggregate type) with the **aggregate id as key**, so all
//! events of an aggregate land in one partition, in order. The producer is idempotent
//! (`enable.idempotence=true`, `acks=all`): librdkafka's own retries neither duplicate nor
//! reorder. A batch is handed to librdkafka whole and its delivery reports are awaited together.
//!
//! Every record carries the [common headers](super::headers) (event id, event type, aggregate
//! type and id, recorded trace context) and `content-type`.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::relay::Relay;
//! use outbox::sinks::{Routing, kafka::KafkaSink};
//!
//! let sink = KafkaSink::connect("127.0.0.1:9092")
//!     .await?
//!     .routing(Routing::template("bank.{aggregate_type}")?);
//! Relay::builder(pool, sink).build().run(std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! For TLS, SASL or other producer settings, pass your own [`ClientConfig`] to
//! [`KafkaSink::with_config`]; the settings above are applied on top of it unless you set them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{Envelope, Routing, SetupError, headers};
use crate::message::Message;
use crate::sink::{Delivery, Destination, Sink, SinkError};

pub use rdkafka;

const SINK: &str = "Kafka";
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Produces events to Kafka; see the [module](self) documentation.
#[derive(Clone)]
pub struct KafkaSink {
    producer: FutureProducer,
    config: ClientConfig,
    routing: Routing,
    envelope: Envelope,
    create: Option<TopicCreation>,
    /// The first bootstrap server's host and port, for traces.
    server: Option<(String, u16)>,
}

/// Creating missing topics: with what, and which topics are known to exist.
#[derive(Clone)]
struct TopicCreation {
    admin: Arc<AdminClient<DefaultClientContext>>,
    partitions: i32,
    replication: i32,
    known: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("routing", &self.routing)
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Connects to the comma-separated `bootstrap_servers` (`host:port,…`) and checks that the
    /// cluster answers a metadata request.
    pub async fn connect(bootstrap_servers: &str) -> Result<Self, SetupError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        Self::with_config(config).await
    }

    /// Connects with an rdkafka producer configuration (re-exported as [`rdkafka`]). Unless
    /// `config` sets them: `enable.idempotence=true`, `acks=all`, `linger.ms=5`,
    /// `message.timeout.ms=30000` (a batch the cluster does not take within 30 s fails and is
    /// retried by the relay) and `compression.type=lz4`.
    pub async fn with_config(mut config: ClientConfig) -> Result<Self, SetupError> {
        for (key, value) in [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
            ("compression.type", "lz4"),
        ] {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        let servers = config.get("bootstrap.servers").unwrap_or("").to_owned();
        if servers.is_empty() {
            return Err(SetupError::new(SINK, "`bootstrap.servers` is not set"));
        }
        let producer: FutureProducer = config
            .create()
            .map_err(|error| SetupError::new(SINK, format!("invalid configuration: {error}")))?;
        let probe = producer.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(None, METADATA_TIMEOUT)
                .map(|metadata| metadata.brokers().len())
        })
        .await
        .map_err(|error| SetupError::new(SINK, format!("metadata request aborted: {error}")))?;
        match metadata {
            Ok(brokers) if brokers > 0 => {}
            Ok(_) => return Err(SetupError::new(SINK, format!("{servers} lists no brokers"))),
            Err(error) => {
                let problem = format!("cannot reach {servers}: {error}");
                // Refused credentials need a person; anything else may be a cluster that is
                // down or starting.
                return Err(match error.rdkafka_error_code() {
                    Some(
                        RDKafkaErrorCode::Authentication
                        | RDKafkaErrorCode::SaslAuthenticationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed,
                    ) => SetupError::new(SINK, problem),
                    _ => SetupError::unreachable(SINK, problem),
                });
            }
        }
        Ok(KafkaSink {
            producer,
            config,
            routing: Routing::default(),
            envelope: Envelope::Payload,
            create: None,
            server: super::server_of(&servers, 9092),
        })
    }

    /// Which topic each event goes to (default: its aggregate type). Topics must exist, be
    /// created by the cluster on first use, or by the sink ([`KafkaSink::create_topics`]).
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// Creates each topic the first time the sink meets it, with `partitions` partitions and
    /// `replication` copies, unless it exists. Off by default: without it, producing to a
    /// missing topic on a cluster that does not create topics fails (and is retried).
    pub fn create_topics(mut self, partitions: i32, replication: i32) -> Result<Self, SetupError> {
        let admin: AdminClient<DefaultClientContext> = self.config.create().map_err(|error| {
            SetupError::new(SINK, format!("cannot create an admin client: {error}"))
        })?;
        self.create = Some(TopicCreation {
            admin: Arc::new(admin),
            partitions,
            replication,
            known: Arc::default(),
        });
        Ok(self)
    }

    /// Makes sure the topics of `batch` exist, when asked to create them.
    async fn ensure_topics(&self, batch: &[Message]) -> Result<(), SinkError> {
        let Some(create) = &self.create else {
            return Ok(());
        };
        let missing: Vec<String> = {
            let known = create
                .known
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut missing: Vec<String> = batch
                .iter()
                .map(|message| self.routing.destination(message))
                .filter(|topic| !known.contains(topic))
                .collect();
            missing.sort();
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|topic| {
                NewTopic::new(
                    topic,
                    create.partitions,
                    TopicReplication::Fixed(create.replication),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
        let results = create
            .admin
            .create_topics(&topics, &options)
            .await
            .map_err(|error| SinkError::transient(format!("cannot create topics: {error}")))?;
        let mut known = create
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for result in results {
            match result {
                Ok(topic) | Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    known.insert(topic);
                }
                Err((topic, code)) => {
                    return Err(SinkError::transient(format!(
                        "cannot create topic {topic}: {code}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The record value (default: the payload as recorded).
    pub fn envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }
}

/// Whether a produce error will recur however often the event is sent again.
fn failure(error: &KafkaError) -> SinkError {
    let text = format!("produce failed: {error}");
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::InvalidRecord,
        ) => SinkError::permanent(text),
        _ => SinkError::transient(text),
    }
}

impl Sink for KafkaSink {
    fn destination(&self, message: &Message) -> Option<Destination> {
        Some(
            self.routing
                .destination_on("kafka", message)
                .with_server(self.server.as_ref()),
        )
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        if let Err(error) = self.ensure_topics(batch).await {
            return batch.iter().map(|_| Err(error.clone())).collect();
        }
        let content_type = self.envelope.content_type();
        let mut pending = Vec::with_capacity(batch.len());
        for message in batch {
            let topic = self.routing.destination(message);
            let body = self.envelope.body(message);
            let mut record_headers = OwnedHeaders::new_with_capacity(6).insert(Header {
                key: "content-type",
                value: Some(content_type),
            });
            for (key, value) in headers(message) {
                record_headers = record_headers.insert(Header {
                    key: &key,
                    value: Some(&value),
                });
            }
            let record = FutureRecord::to(&topic)
                .key(&message.aggregate_id)
                .payload(&body)
                .headers(record_headers);
            pending.push(
                self.producer
                    .send_result(record)
                    .map_err(|(error, _)| failure(&error)),
            );
        }
        let mut results = Vec::with_capacity(batch.len());
        for queued in pending {
            results.push(match queued {
                Err(error) => Err(error),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(failure(&error)),
                    Err(_) => Err(SinkError::transient("the producer was dropped")),
                },
            });
        }
        results
    }
}
