//! Relays the outbox into Kafka, keyed by aggregate id, then consumes the topic exactly once in
//! inbox mode: each record is applied through the inbox, and its offset committed to Kafka only
//! after the database commit. A second delivery of each record is skipped by the inbox.
//! (`inbox::kafka::OffsetConsumer` is the other way: offsets kept in the consumer's database.)
//!
//! ```text
//! cargo run -p outbox-examples --features kafka --bin sink-kafka       # a Kafka broker on 127.0.0.1:9092
//! ```

use outbox::inbox::{InboxMessage, kafka::process};
use outbox::sinks::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use outbox::sinks::kafka::rdkafka::{self, Message as _};
use outbox::sinks::{Routing, kafka::KafkaSink};
use outbox_examples::sink_demo::{ReadModel, bank_with_events, database_path, relay_until_empty};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-kafka")).await?;
    let servers = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let sink = KafkaSink::connect(&servers)
        .await?
        .routing(Routing::template("bank.{aggregate_type}")?) // topic bank.account
        .create_topics(3, 1)?; // 3 partitions, 1 replica, if it does not exist
    let published = relay_until_empty(&pool, sink).await?;

    // The consuming service: its group's committed offsets say where it resumes, run after run.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", ReadModel::CONSUMER)
        .set("enable.auto.commit", "false") // the helper commits, after the database
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["bank.account"])?;
    let mut model = ReadModel::new(&pool, published).await?;
    tokio::time::timeout(ReadModel::PATIENCE, async {
        while !model.has_all() {
            let record = consumer.recv().await?.detach();
            let (id, payload) = (record.message_id()?, record.payload().unwrap_or_default());
            let handler = model.apply(&id, payload);
            let inbox = &ReadModel::INBOX;
            let pool = model.pool();
            let outcome = process(
                inbox,
                pool,
                ReadModel::CONSUMER,
                &consumer,
                &record,
                handler,
            )
            .await?;
            if outcome.is_duplicate() {
                println!("record {id} came twice: skipped by the inbox");
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await
    .map_err(|_| "Kafka did not deliver every published event in time")??;
    model.redeliver_and_print().await?;
    Ok(())
}
