//! Relays the outbox into RabbitMQ, with publisher confirms.
//!
//! ```text
//! cargo run -p outbox-examples --bin sink-rabbitmq    # RabbitMQ on 127.0.0.1:5672
//! ```

use outbox::sinks::{Routing, rabbitmq::RabbitMqSink};
use outbox_examples::sink_demo::{bank_with_events, database_path, relay_until_empty};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-rabbitmq")).await?;
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let sink = RabbitMqSink::connect(&url)
        .await?
        .exchange(Routing::template("bank")?) // one topic exchange, declared by the sink
        .routing_key(Routing::template("{aggregate_type}.{event_type}")?);
    relay_until_empty(&pool, sink).await?;
    Ok(())
}
