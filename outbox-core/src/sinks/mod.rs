//! Broker sinks, each behind a cargo feature, and what they share: [`Routing`] (which topic,
//! subject or stream an event goes to), the headers every message carries, and the optional
//! [CloudEvents](https://cloudevents.io) envelope ([`Envelope`]).
//!
//! | sink | feature | destination | dedup id |
//! | --- | --- | --- | --- |
//! | [`NatsSink`](nats::NatsSink) | `nats` | JetStream subject | `Nats-Msg-Id` = event id |
//! | [`KafkaSink`](kafka::KafkaSink) | `kafka` | topic, key = aggregate id | header `outbox-event-id` |
//! | [`RabbitMqSink`](rabbitmq::RabbitMqSink) | `rabbitmq` | exchange + routing key | `message_id` = event id |
//! | [`RedisSink`](redis::RedisSink) | `redis` | Redis stream key | field `id` = event id |
//! | [`MqttSink`](mqtt::MqttSink) | `mqtt` | MQTT topic | user property `outbox-event-id` |
//! | [`WebhookSink`](webhook::WebhookSink) | `webhook` | one URL, batches signed as Standard Webhooks | element `id` |

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "signature")]
pub mod signature;
#[cfg(feature = "webhook")]
pub mod webhook;

#[cfg(any(
    feature = "nats",
    feature = "redis",
    feature = "kafka",
    feature = "rabbitmq"
))]
pub(crate) use crate::envelope::server_of;
pub use crate::envelope::{
    AGGREGATE_ID, AGGREGATE_TYPE, EVENT_ID, EVENT_TYPE, EVENT_VERSION, Envelope, Routing,
    SetupError, dataschema, fields, headers, recorded_headers, redacted,
};
