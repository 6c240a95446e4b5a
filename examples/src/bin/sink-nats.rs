//! Relays the outbox into NATS JetStream.
//!
//! ```text
//! cargo run -p outbox-examples --features nats --bin sink-nats        # NATS with JetStream on 127.0.0.1:4222
//! ```

use outbox::sinks::{Routing, nats::NatsSink};
use outbox_examples::sink_demo::{bank_with_events, database_path, relay_until_empty};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-nats")).await?;
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let sink = NatsSink::connect(&url)
        .await?
        .routing(Routing::template("bank.{aggregate_type}.{event_type}")?);
    // JetStream stores what a stream's subjects match: one stream for the bank's events, whose
    // duplicate window drops a relay's redeliveries (same Nats-Msg-Id).
    sink.jetstream()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "BANK".into(),
            subjects: vec!["bank.>".into()],
            ..Default::default()
        })
        .await?;
    relay_until_empty(&pool, sink).await?;
    Ok(())
}
