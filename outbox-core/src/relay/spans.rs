//! The relay's `send` spans (feature `opentelemetry`): one per message handed to the sink, a
//! child of the context the event recorded, whose own context the sink carries in the
//! broker's headers.

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};

use crate::message::Message;
use crate::sink::{Delivery, Sink};
use crate::telemetry::{JsonHeaders, SCOPE, destination_attributes, span_name};

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
