//! One OpenTelemetry trace from a request to the consumer: a request span →
//! `#[outbox_event]` → the relay's `send` span → NATS or RabbitMQ → the inbox helper's `process`
//! span → the `#[inbox_handler]`, checked with the OpenTelemetry SDK's in-memory exporter. The
//! tests share one tracer provider (the global one) and each reads the spans of its own trace.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::context::FutureExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanKind, TraceContextExt, TraceId, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox::inbox::{Inbox, InboxMessage, Processed};
use outbox::relay::{Relay, Sink};
use outbox::sinks::{Routing, rabbitmq::RabbitMqSink};
use outbox::{Outbox, OutboxEvent, TableName, inbox_handler, outbox_event};
use outbox_tests::{Pg, TestDb, amqp_queue, amqp_url, eventually, run_id};
use sqlx::{PgPool, Postgres, Transaction};

const NATS_OUTBOX: Outbox =
    Outbox::for_table(TableName::from_static("outbox_trace_nats")).record_trace_context();
const AMQP_OUTBOX: Outbox =
    Outbox::for_table(TableName::from_static("outbox_trace_amqp")).record_trace_context();
const FAILING_OUTBOX: Outbox =
    Outbox::for_table(TableName::from_static("outbox_trace_failing")).record_trace_context();
const PER_AGGREGATE_OUTBOX: Outbox =
    Outbox::for_table(TableName::from_static("outbox_trace_per_aggregate")).record_trace_context();
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

#[outbox_event(outbox = NATS_OUTBOX)]
async fn open_account(_tx: &mut Transaction<'_, Postgres>, id: &str) -> Result<Account, AppError> {
    Ok(Account { id: id.to_owned() })
}

#[outbox_event(outbox = AMQP_OUTBOX)]
async fn open_account_on_rabbitmq(
    _tx: &mut Transaction<'_, Postgres>,
    id: &str,
) -> Result<Account, AppError> {
    Ok(Account { id: id.to_owned() })
}

#[outbox_event(outbox = FAILING_OUTBOX)]
async fn open_account_refused(
    _tx: &mut Transaction<'_, Postgres>,
    id: &str,
) -> Result<Account, AppError> {
    Ok(Account { id: id.to_owned() })
}

#[outbox_event(outbox = PER_AGGREGATE_OUTBOX)]
async fn open_account_per_aggregate(
    _tx: &mut Transaction<'_, Postgres>,
    id: &str,
) -> Result<Account, AppError> {
    Ok(Account { id: id.to_owned() })
}

/// What the handlers saw of the current context: its span and the baggage.
static SEEN: Mutex<Vec<(opentelemetry::trace::SpanContext, Option<String>)>> =
    Mutex::new(Vec::new());

/// The handlers' body: notes the current context, and starts a span of its own.
fn observe() {
    let current = Context::current();
    let tenant = current
        .baggage()
        .get("tenant")
        .map(|value| value.to_string());
    SEEN.lock()
        .unwrap()
        .push((current.span().span_context().clone(), tenant));
    global::tracer("test-consumer").in_span("apply AccountOpened", |_| ());
}

#[inbox_handler(consumer = "trace-test", inbox = INBOX)]
async fn on_account_opened(
    _tx: &mut Transaction<'_, Postgres>,
    message: &async_nats::jetstream::Message,
) -> Result<(), AppError> {
    let _ = message;
    observe();
    Ok(())
}

#[inbox_handler(consumer = "trace-test", inbox = INBOX)]
async fn on_delivery(
    _tx: &mut Transaction<'_, Postgres>,
    message: &lapin::message::Delivery,
) -> Result<(), AppError> {
    let _ = message;
    observe();
    Ok(())
}

/// The global tracer provider and propagators, installed once for the tests of this binary.
fn exporter() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static INSTALLED: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        global::set_tracer_provider(provider.clone());
        global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
        (provider, exporter)
    })
}

/// Runs `record` as a request would: in a server span carrying the baggage `tenant=acme`, then
/// ends the span. Returns the trace's id.
async fn in_a_request<F: Future<Output = ()>>(record: F) -> TraceId {
    let (provider, _) = exporter();
    let service = provider.tracer("test-service");
    let request = service
        .span_builder("POST /accounts")
        .with_kind(SpanKind::Server)
        .start(&service);
    let request =
        Context::current_with_span(request).with_baggage(vec![KeyValue::new("tenant", "acme")]);
    record.with_context(request.clone()).await;
    request.span().end();
    request.span().span_context().trace_id()
}

/// Relays `outbox` to `sink` until stopped.
fn relay<S: Sink>(pool: &PgPool, outbox: &Outbox, sink: S) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        Relay::builder(pool.clone(), sink)
            .outbox(outbox)
            .build()
            .run(std::future::pending()),
    )
}

/// The `send` span of trace `trace_id`, once it ended (the sink answered) and was exported.
async fn finished_send(trace_id: TraceId) -> SpanData {
    eventually(Duration::from_secs(10), "the send span to end", || async {
        let (provider, exporter) = exporter();
        provider.force_flush().unwrap();
        exporter.get_finished_spans().unwrap().iter().any(|span| {
            span.span_context.trace_id() == trace_id && span.span_kind == SpanKind::Producer
        })
    })
    .await;
    let (_, exporter) = exporter();
    let finished = exporter.get_finished_spans().unwrap();
    let spans: Vec<&SpanData> = finished
        .iter()
        .filter(|span| span.span_context.trace_id() == trace_id)
        .collect();
    one(&spans, "send", |s| s.span_kind == SpanKind::Producer).clone()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn one<'a>(spans: &[&'a SpanData], what: &str, test: impl Fn(&SpanData) -> bool) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().copied().filter(|span| test(span)).collect();
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

/// The relations of one trace: request → send → two process spans (the helper's and the
/// handler's own) → the handler's span, with the messaging attributes, the baggage seen.
fn assert_one_trace(
    trace_id: TraceId,
    destination: &str,
    (system, port): (&str, u16),
    message_id: &str,
) {
    let (provider, exporter) = exporter();
    provider.force_flush().unwrap();
    let finished = exporter.get_finished_spans().unwrap();
    let spans: Vec<&SpanData> = finished
        .iter()
        .filter(|span| span.span_context.trace_id() == trace_id)
        .collect();
    let request = one(&spans, "request", |s| s.name == "POST /accounts");
    let send = one(&spans, "send", |s| s.span_kind == SpanKind::Producer);
    assert_eq!(send.name, format!("send {destination}"));
    assert_eq!(
        send.parent_span_id,
        request.span_context.span_id(),
        "the relay continues the request's trace"
    );
    assert_eq!(attribute(send, "messaging.system").as_deref(), Some(system));
    assert_eq!(
        attribute(send, "messaging.destination.name").as_deref(),
        Some(destination)
    );
    // Required by the messaging conventions when known: the broker the relay sends to.
    assert_eq!(
        attribute(send, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        attribute(send, "server.port").as_deref(),
        Some(port.to_string().as_str())
    );
    assert_eq!(attribute(send, "messaging.destination.template"), None);
    assert_eq!(
        attribute(send, "messaging.message.id").as_deref(),
        Some(message_id)
    );
    assert_eq!(
        attribute(send, "messaging.operation.type").as_deref(),
        Some("send")
    );

    let processes: Vec<&SpanData> = spans
        .iter()
        .copied()
        .filter(|s| s.span_kind == SpanKind::Consumer)
        .collect();
    assert_eq!(
        processes.len(),
        2,
        "one consumer span per processing: the handler inside the helper starts none of its own"
    );
    for process in &processes {
        assert_eq!(process.name, format!("process {destination}"));
        assert_eq!(
            process.parent_span_id,
            send.span_context.span_id(),
            "the consumer's span is a child of the relay's, carried in the broker's headers"
        );
        assert_eq!(
            attribute(process, "messaging.system").as_deref(),
            Some(system)
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
    let seen: Vec<_> = SEEN
        .lock()
        .unwrap()
        .iter()
        .filter(|(span, _)| span.trace_id() == trace_id)
        .cloned()
        .collect();
    assert_eq!(
        seen.len(),
        1,
        "the duplicate does not run the handler's body"
    );
    assert_eq!(
        seen[0].1.as_deref(),
        Some("acme"),
        "baggage travels with the event"
    );
}

/// The helper's handler for NATS: the `#[inbox_handler]` function, with the message moved in.
fn through_handler(
    message: async_nats::jetstream::Message,
) -> impl for<'c> FnOnce(
    &'c mut Transaction<'static, Postgres>,
) -> outbox::inbox::Handler<'c, Processed<()>, AppError> {
    move |tx| Box::pin(async move { on_account_opened(tx, &message).await })
}

/// The helper's handler for RabbitMQ (a delivery cannot be cloned: shared).
fn through_delivery_handler(
    delivery: Arc<lapin::message::Delivery>,
) -> impl for<'c> FnOnce(
    &'c mut Transaction<'static, Postgres>,
) -> outbox::inbox::Handler<'c, Processed<()>, AppError> {
    move |tx| Box::pin(async move { on_delivery(tx, &delivery).await })
}

async fn setup(outbox: &Outbox) -> PgPool {
    let db = Pg::connect().await;
    let pool = db.pool().clone();
    outbox.migrate(&pool).await.unwrap();
    INBOX.migrate(&pool).await.unwrap();
    db.execute(format!("DELETE FROM {}", outbox.table())).await;
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_through_the_relay_and_nats_to_the_inbox_handler() {
    let pool = setup(&NATS_OUTBOX).await;
    let prefix = format!("trace_{}", run_id());
    let (sink, stream) = outbox_tests::nats_stream(&prefix).await;

    let account = format!("acc-{}", run_id());
    let trace_id = in_a_request(async {
        let mut tx = pool.begin().await.unwrap();
        open_account(&mut tx, &account).await.unwrap();
        tx.commit().await.unwrap();
    })
    .await;

    let relay = relay(&pool, &NATS_OUTBOX, sink.clone());
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

    let id = message.message_id().unwrap();
    assert_one_trace(trace_id, &format!("{prefix}.account"), ("nats", 4222), &id);
    sink.jetstream()
        .delete_stream(prefix.to_uppercase())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_through_the_relay_and_rabbitmq_to_the_inbox_handler() {
    use lapin::options::BasicGetOptions;

    let pool = setup(&AMQP_OUTBOX).await;
    let exchange = format!("trace_{}", run_id());
    let (_connection, channel, queue) = amqp_queue(&exchange).await;
    let sink = RabbitMqSink::connect(&amqp_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; start RabbitMQ with scripts/services.sh"))
        .exchange(Routing::template(&exchange).unwrap());

    let account = format!("acc-{}", run_id());
    let trace_id = in_a_request(async {
        let mut tx = pool.begin().await.unwrap();
        open_account_on_rabbitmq(&mut tx, &account).await.unwrap();
        tx.commit().await.unwrap();
    })
    .await;

    let relay = relay(&pool, &AMQP_OUTBOX, sink);
    let got: Arc<Mutex<Option<lapin::message::Delivery>>> = Arc::default();
    eventually(
        Duration::from_secs(10),
        "the relay publishes the event to RabbitMQ",
        || {
            let (channel, queue, got) = (channel.clone(), queue.clone(), got.clone());
            async move {
                let message = channel
                    .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .unwrap();
                if let Some(message) = message {
                    *got.lock().unwrap() = Some(message.delivery);
                }
                got.lock().unwrap().is_some()
            }
        },
    )
    .await;
    let delivery = Arc::new(got.lock().unwrap().take().unwrap());
    let processed = outbox::inbox::rabbitmq::process(
        &INBOX,
        &pool,
        "trace-helper",
        &delivery,
        through_delivery_handler(delivery.clone()),
    )
    .await
    .unwrap();
    assert_eq!(processed, Processed::Done(Processed::Done(())));
    let mut tx = pool.begin().await.unwrap();
    assert!(
        on_delivery(&mut tx, &delivery)
            .await
            .unwrap()
            .is_duplicate()
    );
    tx.rollback().await.unwrap();
    relay.abort();

    let id = delivery.message_id().unwrap();
    assert_one_trace(trace_id, &exchange, ("rabbitmq", 5672), &id);
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
}

/// A delivery the sink refuses for good ends its `send` span with an error status, the sink's
/// reason, and `error.type = permanent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delivery_ends_its_send_span_with_the_error() {
    let pool = setup(&FAILING_OUTBOX).await;
    let account = format!("acc-{}", run_id());
    let trace_id = in_a_request(async {
        let mut tx = pool.begin().await.unwrap();
        open_account_refused(&mut tx, &account).await.unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    let sink = outbox::relay::HandlerSink::new(|_| {
        std::future::ready(Err(outbox::relay::SinkError::permanent("schema refused")))
    });
    let relay = relay(&pool, &FAILING_OUTBOX, sink);
    let send = &finished_send(trace_id).await;
    relay.abort();
    assert_eq!(
        send.status,
        opentelemetry::trace::Status::error("schema refused")
    );
    assert_eq!(attribute(send, "error.type").as_deref(), Some("permanent"));
}

/// With the aggregate id in the routing, the span is named after the template, which
/// `messaging.destination.template` carries, and the name keeps the subject itself: one span
/// name per route, not one per aggregate (the messaging conventions' low-cardinality names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_per_aggregate_names_its_span_after_the_template() {
    let pool = setup(&PER_AGGREGATE_OUTBOX).await;
    let prefix = format!("trace_{}", run_id());
    let (sink, _stream) = outbox_tests::nats_stream(&prefix).await;
    let template = format!("{prefix}.{{aggregate_type}}.{{aggregate_id}}");
    let sink = sink.routing(Routing::template(&template).unwrap());
    let account = format!("acc-{}", run_id());
    let trace_id = in_a_request(async {
        let mut tx = pool.begin().await.unwrap();
        open_account_per_aggregate(&mut tx, &account).await.unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    let relay = relay(&pool, &PER_AGGREGATE_OUTBOX, sink.clone());
    let send = &finished_send(trace_id).await;
    relay.abort();
    assert_eq!(send.name, format!("send {template}"));
    assert_eq!(
        attribute(send, "messaging.destination.template").as_deref(),
        Some(template.as_str())
    );
    assert_eq!(
        attribute(send, "messaging.destination.name"),
        Some(format!("{prefix}.account.{account}"))
    );
    assert_eq!(send.status, opentelemetry::trace::Status::Unset);
    sink.jetstream()
        .delete_stream(prefix.to_uppercase())
        .await
        .unwrap();
}
