//! The consumer's `process` spans (feature `opentelemetry`): the inbox helpers and
//! `#[inbox_handler]` run the handler in one, a child of the context the message carries.

use std::future::Future;

use opentelemetry::context::FutureExt;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};

use crate::consumed::InboxMessage;
use crate::telemetry::{SCOPE, destination_attributes, message_context, span_name};

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
