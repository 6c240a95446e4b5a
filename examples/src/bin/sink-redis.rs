//! Relays the outbox into Redis Streams, then consumes the stream exactly once: a member of a
//! consumer group reads the entries (`XREADGROUP`), applies each through the inbox, and `XACK`s
//! it only after the commit. A second delivery of each entry is skipped by the inbox.
//!
//! ```text
//! cargo run -p outbox-examples --features redis --bin sink-redis       # Redis on 127.0.0.1:6379
//! ```

use outbox::inbox::InboxMessage;
use outbox::inbox::redis::RedisConsumer;
use outbox::sinks::{Routing, redis::RedisSink};
use outbox_examples::sink_demo::{ReadModel, bank_with_events, database_path, relay_until_empty};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-redis")).await?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let sink = RedisSink::connect(&url)
        .await?
        .routing(Routing::template("bank:{aggregate_type}")?) // one stream per aggregate type
        .max_len(100_000);
    let published = relay_until_empty(&pool, sink).await?;

    // The consuming service: its group remembers what it acknowledged, run after run.
    let consumer =
        RedisConsumer::connect(&url, "bank:account", ReadModel::CONSUMER, "worker-1").await?;
    let mut model = ReadModel::new(&pool, published).await?;
    tokio::time::timeout(ReadModel::PATIENCE, async {
        while !model.has_all() {
            for entry in consumer.next_batch().await? {
                let (id, payload) = (entry.message_id()?, entry.field("payload").unwrap_or(""));
                let handler = model.apply(&id, payload.as_bytes());
                let inbox = &ReadModel::INBOX;
                let outcome = consumer
                    .process(inbox, model.pool(), ReadModel::CONSUMER, &entry, handler)
                    .await?;
                if outcome.is_duplicate() {
                    println!("entry {id} came twice: skipped by the inbox");
                }
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await
    .map_err(|_| "Redis did not deliver every published event in time")??;
    model.redeliver_and_print().await?;
    Ok(())
}
