//! OpenTelemetry traces across the outbox (feature `opentelemetry`): the context recorded with
//! each event, the relay's `send` spans and the consumer's `process` spans.
//!
//! The library speaks only the OpenTelemetry API: it starts spans with the globally installed
//! tracer provider (`opentelemetry::global::set_tracer_provider`) and reads and writes headers
//! with the globally installed propagator (`opentelemetry::global::set_text_map_propagator`,
//! e.g. W3C `TraceContextPropagator`, composed with `BaggagePropagator` for baggage). Without
//! them, nothing is recorded and the spans are no-ops.
//!
//! One trace runs from the request to the consumer:
//!
//! 1. [`Outbox::record_trace_context`](crate::Outbox::record_trace_context) records the current
//!    context (`traceparent`, `tracestate`, `baggage`) in every event's headers, from
//!    `#[outbox_event]` and the manual API alike.
//! 2. The relay starts one span per message it hands to the sink, `send <destination>` (kind
//!    producer), a child of the recorded context, with the messaging semantic conventions
//!    (`messaging.system`, `messaging.destination.name`, `messaging.message.id`,
//!    `messaging.operation.name` and `.type`). The sink carries *that* span's context in the
//!    broker's headers. One span per message rather than one per batch with links: the events
//!    of a batch come from as many requests, and a per-message span keeps each delivery, its
//!    retries and its failure inside the trace of the request that caused it, where a batch
//!    span would live in no one's trace.
//! 3. The inbox helpers ([`inbox::nats::process`](crate::inbox) and the others) and
//!    `#[inbox_handler]` run the handler in a `process <destination>` span (kind consumer)
//!    whose parent is the context the message carries.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::{Context, KeyValue, global};

use crate::consumed::InboxMessage;
use crate::sink::Destination;

/// The instrumentation scope of the library's spans.
pub const SCOPE: &str = "outbox";

/// The context a consumed message carries (its producer's `send` span), read from its headers
/// with the global propagator: the parent for a consumer's own spans, when it does not use the
/// inbox helpers.
pub fn message_context<M: InboxMessage + ?Sized>(message: &M) -> Context {
    let fields: Vec<String> = global::get_text_map_propagator(|propagator| {
        propagator.fields().map(str::to_owned).collect()
    });
    let carried: std::collections::HashMap<String, String> = fields
        .into_iter()
        .filter_map(|field| message.header(&field).map(|value| (field, value)))
        .collect();
    global::get_text_map_propagator(|propagator| propagator.extract(&carried))
}

/// The current context's propagation headers, to record with an event.
pub(crate) fn current_headers() -> Vec<(String, String)> {
    let mut headers = Pairs(Vec::new());
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&Context::current(), &mut headers);
    });
    headers.0
}

struct Pairs(Vec<(String, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// A message's recorded headers (a JSON object), read and written by the propagator.
pub(crate) struct JsonHeaders(pub(crate) serde_json::Map<String, serde_json::Value>);

impl Extractor for JsonHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(serde_json::Value::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Injector for JsonHeaders {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.to_owned(), serde_json::Value::String(value));
    }
}

/// The messaging attributes of a destination.
pub(crate) fn destination_attributes(destination: Option<&Destination>, into: &mut Vec<KeyValue>) {
    if let Some(destination) = destination {
        into.push(KeyValue::new("messaging.system", destination.system));
        into.push(KeyValue::new(
            "messaging.destination.name",
            destination.name.clone(),
        ));
        if let Some(template) = &destination.template {
            into.push(KeyValue::new(
                "messaging.destination.template",
                template.clone(),
            ));
        }
        if let Some(address) = &destination.server_address {
            into.push(KeyValue::new("server.address", address.clone()));
        }
        if let Some(port) = destination.server_port {
            into.push(KeyValue::new("server.port", i64::from(port)));
        }
        if let Some(key) = &destination.routing_key {
            into.push(KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                key.clone(),
            ));
        }
    }
}

/// `send <destination>`, the destination being its template when the name holds the aggregate
/// id: span names stay as few as the routes (OpenTelemetry's messaging conventions).
pub(crate) fn span_name(operation: &str, destination: Option<&Destination>) -> String {
    match destination {
        Some(destination) => format!(
            "{operation} {}",
            destination.template.as_ref().unwrap_or(&destination.name)
        ),
        None => operation.to_owned(),
    }
}
