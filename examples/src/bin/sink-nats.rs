//! Relays the outbox into NATS JetStream, then consumes the stream exactly once: a durable pull
//! consumer's messages are applied through the inbox, each acknowledged only after the commit.
//! A second delivery of each message is skipped by the inbox.
//!
//! ```text
//! cargo run -p outbox-examples --features nats --bin sink-nats        # NATS with JetStream on 127.0.0.1:4222
//! ```

use async_nats::jetstream::consumer::pull;
use futures_util::StreamExt;
use outbox::inbox::{InboxMessage, nats::process};
use outbox::sinks::{Routing, nats::NatsSink};
use outbox_examples::sink_demo::{ReadModel, bank_with_events, database_path, relay_until_empty};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-nats")).await?;
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let sink = NatsSink::connect(&url)
        .await?
        .routing(Routing::template("bank.{aggregate_type}.{event_type}")?);
    // JetStream stores what a stream's subjects match: one stream for the bank's events, whose
    // duplicate window drops a relay's redeliveries (same Nats-Msg-Id).
    let stream = sink
        .jetstream()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "BANK".into(),
            subjects: vec!["bank.>".into()],
            ..Default::default()
        })
        .await?;
    let published = relay_until_empty(&pool, sink).await?;

    // The consuming service: a durable consumer remembers what it acknowledged, run after run.
    let consumer = stream
        .get_or_create_consumer(
            ReadModel::CONSUMER,
            pull::Config {
                durable_name: Some(ReadModel::CONSUMER.into()),
                filter_subject: "bank.account.>".into(),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    let mut model = ReadModel::new(&pool, published).await?;
    tokio::time::timeout(ReadModel::PATIENCE, async {
        while !model.has_all() {
            let message = messages.next().await.ok_or("the NATS consumer closed")??;
            let (id, payload) = (message.message_id()?, message.payload.to_vec());
            let handler = model.apply(&id, &payload);
            let inbox = &ReadModel::INBOX;
            let outcome =
                process(inbox, model.pool(), ReadModel::CONSUMER, &message, handler).await?;
            if outcome.is_duplicate() {
                println!("message {id} came twice: skipped by the inbox");
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await
    .map_err(|_| "NATS did not deliver every published event in time")??;
    model.redeliver_and_print().await?;
    Ok(())
}
