//! An AsyncAPI 3.0 catalog of every event the program can emit, generated from the
//! [registry](crate::registered_events) and the sink's routing.
//!
//! One channel per destination the routing names (a subject, topic, stream, exchange and routing
//! key, or MQTT topic; `{aggregate_id}` in the address when the routing puts the aggregate id
//! there, declared as a channel parameter), one `send` operation per channel, and one message
//! per event type and version, with the headers every sink sets (`outbox-event-id`,
//! `outbox-event-type`, …) and the payload's JSON Schema when the entity derives
//! `schemars::JsonSchema` (feature `schemars`; a description otherwise).
//!
//! ```
//! use outbox::catalog::Catalog;
//! use outbox::relay::Destination;
//! use outbox::sinks::Routing;
//!
//! let routing = Routing::template("bank.{aggregate_type}.{event_type}")?;
//! let document = Catalog::new("Bank events", "1.0.0")
//!     .description("What the bank publishes.")
//!     .server("production", "nats.internal:4222", "nats")
//!     .document(|message| Some(Destination::new("nats", routing.destination(message))));
//! assert_eq!(document["asyncapi"], "3.0.0");
//! # Ok::<(), outbox::sinks::SetupError>(())
//! ```
//!
//! With a connected sink, `document_for(&sink)` asks the sink itself where each event goes.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::message::Message;
pub use crate::registry::PayloadSchema;
use crate::registry::{EventDescriptor, registered_events};
use crate::sink::{Destination, Sink};
use crate::sinks;

/// The AsyncAPI version of the documents.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// The placeholder of the aggregate id in a channel address.
const AGGREGATE_ID: &str = "{aggregate_id}";

/// The document's title, version, description and servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    title: String,
    version: String,
    description: Option<String>,
    servers: Vec<(String, String, String)>,
}

/// One event type (and version) as the catalog shows it: merged from its registrations (the
/// derive's and each `#[outbox_event]` function's).
struct Entry {
    aggregate_type: &'static str,
    event_type: &'static str,
    version: Option<u32>,
    schema: Option<PayloadSchema>,
    recorded_by: Vec<String>,
}

impl Catalog {
    /// A catalog titled `title`, at `version` (the version of the API it describes, not of
    /// AsyncAPI).
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Catalog {
            title: title.into(),
            version: version.into(),
            description: None,
            servers: Vec::new(),
        }
    }

    /// With a description of the whole API (Markdown).
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// With a server: its name in the document, its `host` (`nats.internal:4222`) and its
    /// AsyncAPI `protocol` (`nats`, `kafka`, `amqp`, `mqtt`, `redis`, `https`).
    pub fn server(
        mut self,
        name: impl Into<String>,
        host: impl Into<String>,
        protocol: impl Into<String>,
    ) -> Self {
        self.servers
            .push((name.into(), host.into(), protocol.into()));
        self
    }

    /// The document, with the channels `sink` routes the events to.
    pub fn document_for<S: Sink>(&self, sink: &S) -> Value {
        self.document(|message| sink.destination(message))
    }

    /// The document, with the channels `destination` names for each event (`None`: a channel
    /// whose address is unknown).
    pub fn document(&self, destination: impl Fn(&Message) -> Option<Destination>) -> Value {
        let mut channels = BTreeMap::<String, Value>::new();
        let mut operations = Map::new();
        let mut messages = Map::new();
        let mut schemas = Map::new();
        for entry in entries() {
            let message_id = id(&match entry.version {
                Some(version) => format!("{}.v{version}", entry.event_type),
                None => entry.event_type.to_owned(),
            });
            let sample = Message::new(
                uuid::Uuid::nil(),
                0,
                entry.aggregate_type,
                AGGREGATE_ID,
                entry.event_type,
                "{}",
            );
            let destination = destination(&sample);
            let (channel_id, channel) = channel(entry.aggregate_type, destination.as_ref());
            let channel = channels.entry(channel_id.clone()).or_insert(channel);
            channel["messages"][&message_id] =
                json!({ "$ref": format!("#/components/messages/{message_id}") });
            let operation = operations
                .entry(format!("send_{channel_id}"))
                .or_insert_with(|| {
                    json!({
                        "action": "send",
                        "channel": { "$ref": format!("#/channels/{channel_id}") },
                        "messages": [],
                    })
                });
            if let Some(list) = operation["messages"].as_array_mut() {
                list.push(json!({
                    "$ref": format!("#/channels/{channel_id}/messages/{message_id}")
                }));
            }
            let payload = match &entry.schema {
                Some(payload) => {
                    for (name, schema) in &payload.definitions {
                        schemas.insert(name.clone(), schema.clone());
                    }
                    payload.schema.clone()
                }
                None => json!({
                    "description": "The JSON the entity serializes to. Derive \
                        `schemars::JsonSchema` for it (feature `schemars`) to describe it here."
                }),
            };
            messages.insert(message_id, message(&entry, payload));
        }
        let mut info = json!({ "title": self.title, "version": self.version });
        if let Some(description) = &self.description {
            info["description"] = json!(description);
        }
        let mut document = json!({
            "asyncapi": ASYNCAPI_VERSION,
            "info": info,
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": { "messages": messages },
        });
        if !schemas.is_empty() {
            document["components"]["schemas"] = Value::Object(schemas);
        }
        if !self.servers.is_empty() {
            let servers: Map<String, Value> = self
                .servers
                .iter()
                .map(|(name, host, protocol)| {
                    (id(name), json!({ "host": host, "protocol": protocol }))
                })
                .collect();
            document["servers"] = Value::Object(servers);
        }
        document
    }
}

/// The registered event types, one entry per event type and version, in name order.
fn entries() -> Vec<Entry> {
    let mut entries: BTreeMap<(&str, &str, Option<u32>), Entry> = BTreeMap::new();
    let mut descriptors: Vec<&EventDescriptor> = registered_events().collect();
    descriptors.sort_by_key(|d| (d.aggregate_type(), d.event_type(), d.module_path()));
    for descriptor in descriptors {
        let key = (
            descriptor.aggregate_type(),
            descriptor.event_type(),
            descriptor.version(),
        );
        let entry = entries.entry(key).or_insert_with(|| Entry {
            aggregate_type: descriptor.aggregate_type(),
            event_type: descriptor.event_type(),
            version: descriptor.version(),
            schema: None,
            recorded_by: Vec::new(),
        });
        if entry.schema.is_none() {
            entry.schema = descriptor.payload_schema();
        }
        if let Some(function) = descriptor.function() {
            entry
                .recorded_by
                .push(format!("{}::{function}", descriptor.module_path()));
        }
    }
    entries.into_values().collect()
}

/// A channel for `destination`, and its id.
fn channel(aggregate_type: &str, destination: Option<&Destination>) -> (String, Value) {
    let Some(destination) = destination else {
        let channel = json!({
            "address": null,
            "description": format!("Events of aggregate `{aggregate_type}`: the sink did not say where it sends them."),
            "messages": {},
        });
        return (id(aggregate_type), channel);
    };
    // RabbitMQ: the address is the routing key, the exchange a binding.
    let address = destination
        .routing_key
        .clone()
        .unwrap_or_else(|| destination.name.clone());
    let key = match &destination.routing_key {
        Some(key) => format!("{}_{key}", destination.name),
        None => destination.name.clone(),
    };
    let mut channel = json!({ "address": address, "messages": {} });
    if address.contains(AGGREGATE_ID) {
        channel["parameters"] = json!({
            "aggregate_id": { "description": "The id of the aggregate the event belongs to." }
        });
    }
    if destination.routing_key.is_some() {
        channel["bindings"] = json!({
            "amqp": {
                "is": "routingKey",
                "exchange": { "name": destination.name, "type": "topic", "durable": true },
                "bindingVersion": "0.3.0",
            }
        });
    }
    channel["description"] = json!(format!(
        "Where the relay publishes on {}.",
        destination.system
    ));
    (id(&key), channel)
}

/// The message object of one event type.
fn message(entry: &Entry, payload: Value) -> Value {
    let mut headers = json!({
        "type": "object",
        "properties": {
            sinks::EVENT_ID: {
                "type": "string", "format": "uuid",
                "description": "The event id (UUIDv7): deduplicate on it.",
            },
            sinks::EVENT_TYPE: { "type": "string", "const": entry.event_type },
            sinks::AGGREGATE_TYPE: { "type": "string", "const": entry.aggregate_type },
            sinks::AGGREGATE_ID: {
                "type": "string",
                "description": "The aggregate id: events of one aggregate arrive in order.",
            },
            "traceparent": {
                "type": "string",
                "description": "W3C trace context, when recorded.",
            },
            "tracestate": { "type": "string" },
        },
        "required": [sinks::EVENT_ID, sinks::EVENT_TYPE, sinks::AGGREGATE_TYPE, sinks::AGGREGATE_ID],
    });
    let mut summary = format!(
        "`{}` of aggregate `{}`",
        entry.event_type, entry.aggregate_type
    );
    let mut extension = json!({
        "aggregateType": entry.aggregate_type,
        "eventType": entry.event_type,
    });
    if let Some(version) = entry.version {
        let version = version.to_string();
        headers["properties"][sinks::EVENT_VERSION] = json!({ "type": "string", "const": version });
        if let Some(required) = headers["required"].as_array_mut() {
            required.push(json!(sinks::EVENT_VERSION));
        }
        summary.push_str(&format!(", version {version}"));
        extension["version"] = json!(entry.version);
        extension["dataschema"] = json!(sinks::dataschema(
            entry.aggregate_type,
            entry.event_type,
            &version
        ));
    }
    if !entry.recorded_by.is_empty() {
        extension["recordedBy"] = json!(entry.recorded_by);
    }
    json!({
        "name": entry.event_type,
        "title": entry.event_type,
        "summary": summary,
        "contentType": "application/json",
        "headers": headers,
        "payload": payload,
        "x-outbox": extension,
    })
}

/// `text` as an AsyncAPI component key (`[A-Za-z0-9_.-]`).
fn id(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_only_what_asyncapi_keys_allow() {
        assert_eq!(
            id("bank.account/{aggregate_id}"),
            "bank.account__aggregate_id_"
        );
        assert_eq!(id("AccountOpened.v2"), "AccountOpened.v2");
    }

    #[test]
    fn a_routing_key_is_the_address_and_the_exchange_a_binding() {
        let destination = Destination::new("rabbitmq", "bank").with_routing_key("account.Opened");
        let (key, channel) = channel("account", Some(&destination));
        assert_eq!(key, "bank_account.Opened");
        assert_eq!(channel["address"], "account.Opened");
        assert_eq!(channel["bindings"]["amqp"]["exchange"]["name"], "bank");
    }

    #[test]
    fn an_aggregate_id_in_the_address_is_a_parameter() {
        let destination = Destination::new("mqtt", "bank/account/{aggregate_id}");
        let (_, channel) = channel("account", Some(&destination));
        assert!(channel["parameters"]["aggregate_id"].is_object());
        let (_, unknown) = channel_without();
        assert!(unknown["address"].is_null());
    }

    fn channel_without() -> (String, Value) {
        channel("account", None)
    }
}
