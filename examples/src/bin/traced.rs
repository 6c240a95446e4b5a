//! One OpenTelemetry trace from a request to the consumer: the service records an account in a
//! request span, the relay publishes it in a `send` span, and the consumer's `#[inbox_handler]`
//! applies it in a `process` span, each the child of the one before. SQLite and an in-process
//! channel stand in for the database and the broker; the spans are printed as a tree.
//!
//! ```text
//! cargo run -p outbox-examples --features otel --bin traced
//! ```
//!
//! A service exports its spans with `opentelemetry-otlp` instead of keeping them in memory:
//! only the tracer provider's exporter changes.

use opentelemetry::context::FutureExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox::inbox::Inbox;
use outbox::relay::{ChannelSink, Message, Relay};
use outbox::{Outbox, TableName, inbox_handler, outbox_event};
use outbox_examples::{Account, BankError};
use sqlx::{Sqlite, SqlitePool, Transaction};

/// Every event records the current trace context.
const OUTBOX: Outbox =
    Outbox::for_table(TableName::from_static("traced_outbox")).record_trace_context();
const INBOX: Inbox = Inbox::for_table(TableName::from_static("traced_inbox"));

#[outbox_event(outbox = OUTBOX)]
async fn open_account(tx: &mut Transaction<'_, Sqlite>, owner: &str) -> Result<Account, BankError> {
    Ok(sqlx::query_as(
        "INSERT INTO accounts (owner, balance_cents, spending_limit_cents) VALUES (?, 0, 0) \
         RETURNING id, owner, balance_cents, spending_limit_cents",
    )
    .bind(owner)
    .fetch_one(&mut **tx)
    .await?)
}

/// The consumer: runs in the `process` span, a child of the relay's `send` span.
#[inbox_handler(consumer = "welcome-mail", inbox = INBOX)]
async fn welcome(_tx: &mut Transaction<'_, Sqlite>, message: &Message) -> Result<(), BankError> {
    let account: Account = serde_json::from_str(&message.payload)?;
    global::tracer("welcome-mail").in_span(format!("mail {}", account.owner), |_| ());
    Ok(())
}

/// Prints `span` and its children, indented.
fn print_tree(spans: &[SpanData], span: &SpanData, depth: usize) {
    let kind = format!("{:?}", span.span_kind).to_lowercase();
    println!("{}{} ({kind})", "  ".repeat(depth), span.name);
    let mut children: Vec<&SpanData> = spans
        .iter()
        .filter(|child| child.parent_span_id == span.span_context.span_id())
        .collect();
    children.sort_by_key(|child| child.start_time);
    for child in children {
        print_tree(spans, child, depth + 1);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));

    let pool = SqlitePool::connect("sqlite::memory:").await?;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, \
         balance_cents INTEGER NOT NULL, spending_limit_cents INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    OUTBOX.migrate(&pool).await?;
    INBOX.migrate(&pool).await?;

    // The request: its span is current while the service records the account.
    let tracer = provider.tracer("bank");
    let request = tracer
        .span_builder("POST /accounts")
        .with_kind(SpanKind::Server)
        .start(&tracer);
    let request = Context::current_with_span(request);
    async {
        let mut tx = pool.begin().await?;
        open_account(&mut tx, "Ada").await?;
        tx.commit().await?;
        Ok::<_, BankError>(())
    }
    .with_context(request.clone())
    .await?;
    request.span().end();

    let (sink, mut received) = ChannelSink::new(16);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(pool.clone(), sink)
            .outbox(&OUTBOX)
            .build()
            .run(async {
                let _ = stopped.await;
            }),
    );
    let message = received.recv().await.ok_or("the relay stopped")?;
    let mut tx = pool.begin().await?;
    if welcome(&mut tx, &message).await?.is_duplicate() {
        return Err("a fresh inbox saw the message twice".into());
    }
    tx.commit().await?;
    stop.send(()).ok();
    relay.await?;

    provider.force_flush()?;
    let spans = exporter.get_finished_spans()?;
    let root = spans
        .iter()
        .find(|span| span.name == "POST /accounts")
        .ok_or("no request span")?;
    let in_trace = spans
        .iter()
        .filter(|span| span.span_context.trace_id() == root.span_context.trace_id())
        .count();
    println!("trace {}: {in_trace} spans", root.span_context.trace_id());
    print_tree(&spans, root, 1);
    provider.shutdown()?;
    Ok(())
}
