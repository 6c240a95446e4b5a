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

use std::future::Future;

use opentelemetry::context::FutureExt;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};

use crate::consumed::InboxMessage;
use crate::message::Message;
use crate::sink::{Delivery, Destination, Sink};

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
struct JsonHeaders(serde_json::Map<String, serde_json::Value>);

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
fn destination_attributes(destination: Option<&Destination>, into: &mut Vec<KeyValue>) {
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
fn span_name(operation: &str, destination: Option<&Destination>) -> String {
    match destination {
        Some(destination) => format!(
            "{operation} {}",
            destination.template.as_ref().unwrap_or(&destination.name)
        ),
        None => operation.to_owned(),
    }
}

/// The relay's `send` spans of one wave of messages, one per message.
pub(crate) struct SendSpans(Vec<Context>);

impl SendSpans {
    /// Starts a span per message, each a child of the context recorded with it, and writes the
    /// span's context into the message's headers, which the sink carries to the broker.
    pub(crate) fn start<S: Sink>(sink: &S, table: &str, wave: &mut [Message]) -> Self {
        let tracer = global::tracer(SCOPE);
        let fields: Vec<String> = global::get_text_map_propagator(|propagator| {
            propagator.fields().map(str::to_owned).collect()
        });
        let contexts = wave
            .iter_mut()
            .map(|message| {
                // Headers that name none of the propagator's fields carry no context: not parsed.
                let carried = message
                    .headers
                    .as_deref()
                    .filter(|text| fields.iter().any(|field| text.contains(field.as_str())));
                let mut headers = JsonHeaders(
                    carried
                        .and_then(|text| serde_json::from_str(text).ok())
                        .unwrap_or_default(),
                );
                let parent = match carried {
                    Some(_) => {
                        global::get_text_map_propagator(|propagator| propagator.extract(&headers))
                    }
                    None => Context::new(),
                };
                let destination = sink.destination(message);
                let mut attributes = vec![
                    KeyValue::new("messaging.operation.name", "send"),
                    KeyValue::new("messaging.operation.type", "send"),
                    KeyValue::new("messaging.message.id", message.id.to_string()),
                    KeyValue::new("outbox.table", table.to_owned()),
                    KeyValue::new("outbox.event_type", message.event_type.clone()),
                    KeyValue::new("outbox.aggregate_type", message.aggregate_type.clone()),
                    KeyValue::new("outbox.aggregate_id", message.aggregate_id.clone()),
                    KeyValue::new("outbox.attempt", i64::from(message.attempts) + 1),
                ];
                destination_attributes(destination.as_ref(), &mut attributes);
                let span = tracer
                    .span_builder(span_name("send", destination.as_ref()))
                    .with_kind(SpanKind::Producer)
                    .with_attributes(attributes)
                    .start_with_context(&tracer, &parent);
                let context = parent.with_span(span);
                let own = context.span().span_context().clone();
                // A no-op tracer's span is its parent's: the headers already say it.
                if own.is_valid() && own != *parent.span().span_context() {
                    if carried.is_none() {
                        // Parsed only now, to keep the other headers.
                        if let Some(text) = message.headers.as_deref() {
                            headers.0 = serde_json::from_str(text).unwrap_or_default();
                        }
                    }
                    global::get_text_map_propagator(|propagator| {
                        propagator.inject_context(&context, &mut headers);
                    });
                    message.headers = Some(serde_json::Value::Object(headers.0).to_string());
                }
                context
            })
            .collect();
        SendSpans(contexts)
    }

    /// Ends the spans with the sink's results: an error status for a failed delivery.
    pub(crate) fn finish(self, results: &[Delivery]) {
        for (index, context) in self.0.into_iter().enumerate() {
            let span = context.span();
            match results.get(index) {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    let kind = if error.is_permanent() {
                        "permanent"
                    } else {
                        "transient"
                    };
                    span.set_attribute(KeyValue::new("error.type", kind));
                    span.set_status(Status::error(error.to_string()));
                }
                None => span.set_status(Status::error("the sink returned no result")),
            }
            span.end();
        }
    }
}

/// Marks the context in which the inbox processes a message, so that an `#[inbox_handler]`
/// called inside continues its span instead of starting another.
struct Processing(String);

/// Starts the consumer's `process` span of `message`, a child of the context it carries.
fn start_process<M: InboxMessage + ?Sized>(message: &M, id: &str, consumer: &str) -> Context {
    let tracer = global::tracer(SCOPE);
    let parent = message_context(message);
    let destination = message.destination();
    let mut attributes = vec![
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.message.id", id.to_owned()),
        KeyValue::new("messaging.consumer.group.name", consumer.to_owned()),
    ];
    destination_attributes(destination.as_ref(), &mut attributes);
    let span = tracer
        .span_builder(span_name("process", destination.as_ref()))
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    parent.with_span(span).with_value(Processing(id.to_owned()))
}

/// Runs `work`, the processing of `message` by `consumer`, in its `process` span; unless the
/// current context already processes this message (an `#[inbox_handler]` called by an inbox
/// helper), where it runs in that span.
pub(crate) async fn processing<M, F, T, E>(
    message: &M,
    id: &str,
    consumer: &str,
    work: F,
) -> Result<T, E>
where
    M: InboxMessage + ?Sized,
    F: Future<Output = Result<T, E>>,
{
    let current = Context::current();
    if current
        .get::<Processing>()
        .is_some_and(|processing| processing.0 == id)
    {
        return work.await;
    }
    let context = start_process(message, id, consumer);
    let outcome = work.with_context(context.clone()).await;
    let span = context.span();
    if outcome.is_err() {
        span.set_status(Status::error(
            "the handler failed: the message is redelivered",
        ));
    }
    span.end();
    outcome
}
