//! `traced`: what OpenTelemetry costs the relay (feature `opentelemetry`). Events per second
//! from the preloaded table into the in-process sink, one relay: with no tracer provider (the
//! API's no-op: the baseline), then with the SDK sampling every `send` span and exporting them
//! in batches to an exporter that counts and discards them, for events recorded without and
//! with a trace context (root spans, then children whose context is written into each
//! message's headers).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use sqlx::PgPool;

use crate::relay::{self, EVENTS};

/// Counts the spans it is given and drops them.
#[derive(Debug, Clone, Default)]
struct Discard(Arc<AtomicUsize>);

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len(), Ordering::Relaxed);
        Ok(())
    }
}

pub(crate) async fn run(pool: &PgPool) -> Result<(), Box<dyn std::error::Error>> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let traceparent =
        r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
    relay::fresh_table(pool).await?;
    relay::preload(pool).await?;
    let noop = relay::drain(pool, vec![relay::in_process()], EVENTS).await?;
    relay::preload_with_headers(pool, traceparent).await?;
    let noop_headers = relay::drain(pool, vec![relay::in_process()], EVENTS).await?;

    let exported = Discard::default();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exported.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    relay::preload(pool).await?;
    let roots = relay::drain(pool, vec![relay::in_process()], EVENTS).await?;
    let traceparent =
        r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
    relay::preload_with_headers(pool, traceparent).await?;
    let children = relay::drain(pool, vec![relay::in_process()], EVENTS).await?;
    provider.force_flush()?;
    let spans = exported.0.load(Ordering::Relaxed);
    provider.shutdown()?;
    relay::drop_table(pool).await?;

    println!("{EVENTS} preloaded events, one relay, in-process sink; {spans} spans exported\n");
    println!("| tracing | events/s | ratio to no provider, same run |");
    println!("| --- | ---: | ---: |");
    println!("| no tracer provider (no-op API) | {noop:.0} | 1.00 |");
    println!(
        "| no tracer provider, events with a trace context | {noop_headers:.0} | {:.2} |",
        noop_headers / noop
    );
    println!(
        "| SDK, every span sampled, events without a trace context | {roots:.0} | {:.2} |",
        roots / noop
    );
    println!(
        "| SDK, every span sampled, events with a trace context | {children:.0} | {:.2} (to the row above the previous: {:.2}) |",
        children / noop,
        children / noop_headers
    );
    Ok(())
}
