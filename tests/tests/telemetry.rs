//! One OpenTelemetry trace from a request to the consumer: a request span →
//! `#[outbox_event]` → the relay's `send` span → NATS → the inbox helper's `process` span → the
//! `#[inbox_handler]`, checked with the OpenTelemetry SDK's in-memory exporter.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::context::FutureExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox::inbox::{Inbox, Processed};
use outbox::relay::Relay;
use outbox::sinks::{Routing, nats::NatsSink};
use outbox::{Outbox, OutboxEvent, TableName, inbox_handler, outbox_event};
use outbox_tests::{Pg, TestDb, run_id};
use sqlx::{Postgres, Transaction};

const OUTBOX: Outbox =
    Outbox::for_table(TableName::from_static("outbox_trace_test")).record_trace_context();
const INBOX: Inbox = Inbox::for_table(TableName::from_static("inbox_trace_test"));

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
}

#[derive(serde::Serialize, OutboxEvent)]
#[outbox(aggregate_type = "account", event_type = "AccountOpened")]
struct Account {
    #[outbox(aggregate_id)]
    id: String,
}

#[outbox_event(outbox = OUTBOX)]
async fn open_account(_tx: &mut Transaction<'_, Postgres>, id: &str) -> Result<Account, AppError> {
    Ok(Account { id: id.to_owned() })
}

/// What the handler saw of the current context: its span and the baggage.
static SEEN: Mutex<Vec<(opentelemetry::trace::SpanContext, Option<String>)>> =
    Mutex::new(Vec::new());

#[inbox_handler(consumer = "trace-test", inbox = INBOX)]
async fn on_account_opened(
    _tx: &mut Transaction<'_, Postgres>,
    message: &async_nats::jetstream::Message,
) -> Result<(), AppError> {
    let current = Context::current();
    let tenant = current
        .baggage()
        .get("tenant")
        .map(|value| value.to_string());
    SEEN.lock()
        .unwrap()
        .push((current.span().span_context().clone(), tenant));
    // Work of the handler's own: a child of the consumer's span.
    let tracer = global::tracer("test-consumer");
    tracer.in_span("apply AccountOpened", |_| ());
    let _ = message;
    Ok(())
}

/// The helper's handler: the `#[inbox_handler]` function, with the message moved in.
fn through_handler(
    message: async_nats::jetstream::Message,
) -> impl for<'c> FnOnce(
    &'c mut Transaction<'static, Postgres>,
) -> outbox::inbox::Handler<'c, Processed<()>, AppError> {
    move |tx| Box::pin(async move { on_account_opened(tx, &message).await })
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn one<'a>(spans: &'a [SpanData], what: &str, test: impl Fn(&SpanData) -> bool) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|span| test(span)).collect();
    match found.as_slice() {
        [span] => span,
        other => panic!(
            "expected one {what} span, found {}: {:#?}",
            other.len(),
            spans
                .iter()
                .map(|s| (&s.name, s.span_kind.clone()))
                .collect::<Vec<_>>()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_through_the_relay_and_nats_to_the_inbox_handler() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));

    let db = Pg::connect().await;
    let pool = db.pool().clone();
    OUTBOX.migrate(&pool).await.unwrap();
    INBOX.migrate(&pool).await.unwrap();
    db.execute(format!("DELETE FROM {}", OUTBOX.table())).await;
    let prefix = format!("trace_{}", run_id());
    let url =
        std::env::var("OUTBOX_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let sink = NatsSink::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}; start NATS with scripts/services.sh"))
        .routing(Routing::template(&format!("{prefix}.{{aggregate_type}}")).unwrap());
    let stream = sink
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: prefix.to_uppercase(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .unwrap();

    // The request: a server span with baggage, current while the service records its event.
    let service = provider.tracer("test-service");
    let request = service
        .span_builder("POST /accounts")
        .with_kind(SpanKind::Server)
        .start(&service);
    let request =
        Context::current_with_span(request).with_baggage(vec![KeyValue::new("tenant", "acme")]);
    let account = format!("acc-{}", run_id());
    async {
        let mut tx = pool.begin().await.unwrap();
        open_account(&mut tx, &account).await.unwrap();
        tx.commit().await.unwrap();
    }
    .with_context(request.clone())
    .await;
    request.span().end();

    let relay = tokio::spawn(
        Relay::builder(pool.clone(), sink.clone())
            .outbox(&OUTBOX)
            .build()
            .run(std::future::pending()),
    );
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("trace-test".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("the relay publishes the event to NATS")
        .unwrap()
        .unwrap();
    // Through the NATS helper, which runs the handler in the consumer's span...
    let processed = outbox::inbox::nats::process(
        &INBOX,
        &pool,
        "trace-helper",
        &message,
        through_handler(message.clone()),
    )
    .await
    .unwrap();
    assert_eq!(processed, Processed::Done(Processed::Done(())));
    // ...and, redelivered, straight to the handler, which starts that span itself.
    let mut tx = pool.begin().await.unwrap();
    let again = on_account_opened(&mut tx, &message).await.unwrap();
    assert!(again.is_duplicate());
    tx.rollback().await.unwrap();
    relay.abort();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let request = one(&spans, "request", |s| s.name == "POST /accounts");
    let trace_id = request.span_context.trace_id();
    let send = one(&spans, "send", |s| s.span_kind == SpanKind::Producer);
    assert_eq!(send.name, format!("send {prefix}.account"));
    assert_eq!(
        send.span_context.trace_id(),
        trace_id,
        "the relay continues the request's trace"
    );
    assert_eq!(send.parent_span_id, request.span_context.span_id());
    assert_eq!(attribute(send, "messaging.system").as_deref(), Some("nats"));
    assert_eq!(
        attribute(send, "messaging.destination.name"),
        Some(format!("{prefix}.account"))
    );
    assert_eq!(
        attribute(send, "messaging.message.id"),
        outbox::inbox::InboxMessage::message_id(&message).ok()
    );
    assert_eq!(
        attribute(send, "messaging.operation.type").as_deref(),
        Some("send")
    );

    let processes: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Consumer)
        .collect();
    assert_eq!(
        processes.len(),
        2,
        "one consumer span per processing: the handler inside the helper starts none of its own"
    );
    for process in &processes {
        assert_eq!(process.name, format!("process {prefix}.account"));
        assert_eq!(process.span_context.trace_id(), trace_id);
        assert_eq!(
            process.parent_span_id,
            send.span_context.span_id(),
            "the consumer's span is a child of the relay's, carried in the NATS headers"
        );
    }
    let mut groups: Vec<Option<String>> = processes
        .iter()
        .map(|p| attribute(p, "messaging.consumer.group.name"))
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        [
            Some("trace-helper".to_owned()),
            Some("trace-test".to_owned())
        ]
    );
    let applied = one(&spans, "handler's own", |s| s.name == "apply AccountOpened");
    assert!(
        processes
            .iter()
            .any(|p| p.span_context.span_id() == applied.parent_span_id),
        "the handler runs with the consumer's span current"
    );
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        1,
        "the duplicate does not run the handler's body"
    );
    assert_eq!(seen[0].0.trace_id(), trace_id);
    assert_eq!(
        seen[0].1.as_deref(),
        Some("acme"),
        "baggage travels with the event"
    );

    provider.shutdown().unwrap();
    sink.jetstream()
        .delete_stream(prefix.to_uppercase())
        .await
        .unwrap();
    db.execute(format!("DELETE FROM {}", INBOX.table())).await;
}
