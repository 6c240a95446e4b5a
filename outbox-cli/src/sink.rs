//! The sink a configuration names, built and checked at start-up.

use outbox::relay::{Delivery, Destination, Message, Sink};
use outbox::sinks::kafka::rdkafka;
use outbox::sinks::{
    Envelope, Routing, kafka::KafkaSink, mqtt::MqttSink, nats::NatsSink, rabbitmq::RabbitMqSink,
    redis::RedisSink, webhook::WebhookSink,
};

use crate::CliError;
use crate::config::SinkConfig;

/// One of the library's broker sinks.
#[derive(Debug)]
pub(crate) enum AnySink {
    Nats(NatsSink),
    Kafka(KafkaSink),
    RabbitMq(RabbitMqSink),
    Redis(RedisSink),
    Mqtt(MqttSink),
    Webhook(WebhookSink),
}

const KINDS: &str = "nats, kafka, rabbitmq, redis, mqtt, webhook";

/// The Kafka compression codecs librdkafka knows.
const COMPRESSIONS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

impl AnySink {
    /// Builds the sink and connects it; `webhook_secret` comes from the environment or a flag.
    /// Every setting is checked before connecting, so that a mistake is reported at once even
    /// while the broker is down.
    pub(crate) async fn connect(
        config: &SinkConfig,
        webhook_secret: Option<&str>,
    ) -> Result<AnySink, CliError> {
        let routing = match config.routing.as_deref() {
            None if config.routes.is_empty() => None,
            None => {
                return Err(CliError::Config(
                    "sink.routes needs sink.routing, the template for the other event types".into(),
                ));
            }
            Some(template) => {
                let mut routing = Routing::template(template).map_err(config_error)?;
                for (event_type, template) in &config.routes {
                    routing = routing.route(event_type, template).map_err(config_error)?;
                }
                Some(routing)
            }
        };
        let envelope = match config.envelope.as_deref() {
            None | Some("payload") => Envelope::Payload,
            Some("cloudevents") => Envelope::CloudEvents {
                source: config.source.clone().unwrap_or_else(|| "/outbox".into()),
            },
            Some(other) => {
                return Err(CliError::Config(format!(
                    "sink.envelope {other:?} is not `payload` or `cloudevents`"
                )));
            }
        };
        let only_for = |key: &str, set: bool, kind: &str| {
            if set && config.kind != kind {
                return Err(CliError::Config(format!(
                    "sink.{key} applies to the {kind} sink only, not to {:?}",
                    config.kind
                )));
            }
            Ok(())
        };
        only_for("routing_key", config.routing_key.is_some(), "rabbitmq")?;
        only_for("mandatory", config.mandatory.is_some(), "rabbitmq")?;
        only_for("compression", config.compression.is_some(), "kafka")?;
        if config.kind == "webhook" && routing.is_some() {
            return Err(CliError::Config(
                "sink.routing does not apply to the webhook sink: it posts every event to sink.url"
                    .into(),
            ));
        }
        let routing_key = config
            .routing_key
            .as_deref()
            .map(Routing::template)
            .transpose()
            .map_err(config_error)?;
        if let Some(codec) = &config.compression
            && !COMPRESSIONS.contains(&codec.as_str())
        {
            return Err(CliError::Config(format!(
                "sink.compression {codec:?} is not one of {}",
                COMPRESSIONS.join(", ")
            )));
        }
        let url = config.url.as_str();
        let sink = match config.kind.as_str() {
            "nats" => {
                let mut sink = NatsSink::connect(url).await.map_err(sink_error)?;
                if let Some(routing) = routing {
                    sink = sink.routing(routing);
                }
                AnySink::Nats(sink.envelope(envelope))
            }
            "kafka" => {
                let mut producer = rdkafka::ClientConfig::new();
                producer.set("bootstrap.servers", url);
                if let Some(codec) = &config.compression {
                    producer.set("compression.type", codec);
                }
                let mut sink = KafkaSink::with_config(producer).await.map_err(sink_error)?;
                if let Some(routing) = routing {
                    sink = sink.routing(routing);
                }
                AnySink::Kafka(sink.envelope(envelope))
            }
            "rabbitmq" => {
                let mut sink = RabbitMqSink::connect(url).await.map_err(sink_error)?;
                if let Some(routing) = routing {
                    sink = sink.exchange(routing);
                }
                if let Some(key) = routing_key {
                    sink = sink.routing_key(key);
                }
                if let Some(mandatory) = config.mandatory {
                    sink = sink.mandatory(mandatory);
                }
                AnySink::RabbitMq(sink.envelope(envelope))
            }
            "redis" => {
                let mut sink = RedisSink::connect(url).await.map_err(sink_error)?;
                if let Some(routing) = routing {
                    sink = sink.routing(routing);
                }
                AnySink::Redis(sink.envelope(envelope))
            }
            "mqtt" => {
                let mut sink = MqttSink::connect(url).await.map_err(sink_error)?;
                if let Some(routing) = routing {
                    sink = sink.routing(routing);
                }
                AnySink::Mqtt(sink.envelope(envelope))
            }
            "webhook" => {
                let secret = webhook_secret.or(config.secret.as_deref()).ok_or_else(|| {
                    CliError::Config(
                        "the webhook sink needs a signing secret: set OUTBOX_WEBHOOK_SECRET \
                         (or sink.secret)"
                            .into(),
                    )
                })?;
                let sink = WebhookSink::connect(url, secret)
                    .await
                    .map_err(sink_error)?;
                AnySink::Webhook(sink.envelope(envelope))
            }
            other => {
                return Err(CliError::Config(format!(
                    "sink.kind {other:?} is not one of {KINDS}"
                )));
            }
        };
        Ok(sink)
    }
}

fn config_error(error: outbox::sinks::SetupError) -> CliError {
    CliError::Config(error.to_string())
}

/// An unreachable broker is waited for; anything else needs a person.
fn sink_error(error: outbox::sinks::SetupError) -> CliError {
    if error.is_unreachable() {
        CliError::SinkUnreachable(error.to_string())
    } else {
        CliError::Sink(error.to_string())
    }
}

/// `$body` with `$sink` bound to the sink inside whichever variant `$any` is.
macro_rules! each {
    ($any:expr, $sink:ident => $body:expr) => {
        match $any {
            AnySink::Nats($sink) => $body,
            AnySink::Kafka($sink) => $body,
            AnySink::RabbitMq($sink) => $body,
            AnySink::Redis($sink) => $body,
            AnySink::Mqtt($sink) => $body,
            AnySink::Webhook($sink) => $body,
        }
    };
}

impl Sink for AnySink {
    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        each!(self, sink => sink.publish(batch).await)
    }

    fn keeps_order(&self) -> bool {
        each!(self, sink => sink.keeps_order())
    }

    fn destination(&self, message: &Message) -> Option<Destination> {
        each!(self, sink => sink.destination(message))
    }
}
