//! Relays the outbox into Kafka, keyed by aggregate id.
//!
//! ```text
//! cargo run -p outbox-examples --features kafka --bin sink-kafka       # a Kafka broker on 127.0.0.1:9092
//! ```

use outbox::sinks::{Routing, kafka::KafkaSink};
use outbox_examples::sink_demo::{bank_with_events, database_path, relay_until_empty};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-kafka")).await?;
    let servers = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let sink = KafkaSink::connect(&servers)
        .await?
        .routing(Routing::template("bank.{aggregate_type}")?) // topic bank.account
        .create_topics(3, 1)?; // 3 partitions, 1 replica, if it does not exist
    relay_until_empty(&pool, sink).await?;
    Ok(())
}
