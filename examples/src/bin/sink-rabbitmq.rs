//! Relays the outbox into RabbitMQ, with publisher confirms, then consumes the queue exactly
//! once: each delivery is applied through the inbox and acknowledged only after the commit. A
//! second delivery of each message is skipped by the inbox.
//!
//! ```text
//! cargo run -p outbox-examples --features rabbitmq --bin sink-rabbitmq    # RabbitMQ on 127.0.0.1:5672
//! ```
//!
//! The sink publishes `mandatory`: an event that no queue is bound to receive is returned by the
//! broker, retried and finally dead-lettered, never dropped. So this example first binds the
//! queue a consumer would read (`bank-audit`) to the exchange, as a consumer's deployment would.

use futures_util::StreamExt;
use outbox::inbox::{InboxMessage, rabbitmq::process};
use outbox::sinks::rabbitmq::lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use outbox::sinks::rabbitmq::lapin::{self, types::FieldTable};
use outbox::sinks::{Routing, rabbitmq::RabbitMqSink};
use outbox_examples::sink_demo::{ReadModel, bank_with_events, database_path, relay_until_empty};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-rabbitmq")).await?;
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());

    // The consumer's side: a queue bound to the exchange the sink publishes to.
    let connection = lapin::Connection::connect(&url, Default::default()).await?;
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            "bank".into(),
            lapin::ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("bank-audit".into(), queue, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            "bank-audit".into(),
            "bank".into(),
            "account.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let sink = RabbitMqSink::connect(&url)
        .await?
        .exchange(Routing::template("bank")?) // one topic exchange, declared by the sink
        .routing_key(Routing::template("{aggregate_type}.{event_type}")?);
    let published = relay_until_empty(&pool, sink).await?;

    // The consuming service: manual acknowledgements, each sent after its commit.
    let mut deliveries = channel
        .basic_consume(
            "bank-audit".into(),
            ReadModel::CONSUMER.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut model = ReadModel::new(&pool, published).await?;
    tokio::time::timeout(ReadModel::PATIENCE, async {
        while !model.has_all() {
            let delivery = deliveries
                .next()
                .await
                .ok_or("the RabbitMQ consumer closed")??;
            let (id, payload) = (delivery.message_id()?, delivery.data.clone());
            let handler = model.apply(&id, &payload);
            let inbox = &ReadModel::INBOX;
            let outcome =
                process(inbox, model.pool(), ReadModel::CONSUMER, &delivery, handler).await?;
            if outcome.is_duplicate() {
                println!("message {id} came twice: skipped by the inbox");
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await
    .map_err(|_| "RabbitMQ did not deliver every published event in time")??;
    model.redeliver_and_print().await?;

    let waiting = channel
        .queue_delete("bank-audit".into(), QueueDeleteOptions::default())
        .await?;
    println!("queue bank-audit held {waiting} messages not acknowledged");
    Ok(())
}
