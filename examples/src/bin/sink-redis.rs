//! Relays the outbox into Redis Streams.
//!
//! ```text
//! cargo run -p outbox-examples --features redis --bin sink-redis       # Redis on 127.0.0.1:6379
//! ```

use outbox::sinks::{Routing, redis::RedisSink};
use outbox_examples::sink_demo::{bank_with_events, database_path, relay_until_empty};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-redis")).await?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let sink = RedisSink::connect(&url)
        .await?
        .routing(Routing::template("bank:{aggregate_type}")?) // one stream per aggregate type
        .max_len(100_000);
    relay_until_empty(&pool, sink).await?;
    Ok(())
}
