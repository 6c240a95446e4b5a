//! Relays the outbox into RabbitMQ, with publisher confirms.
//!
//! ```text
//! cargo run -p outbox-examples --features rabbitmq --bin sink-rabbitmq    # RabbitMQ on 127.0.0.1:5672
//! ```
//!
//! The sink publishes `mandatory`: an event that no queue is bound to receive is returned by the
//! broker, retried and finally dead-lettered, never dropped. So this example first binds the
//! queue a consumer would read (`bank-audit`) to the exchange, as a consumer's deployment would.

use outbox::sinks::rabbitmq::lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use outbox::sinks::rabbitmq::lapin::{self, types::FieldTable};
use outbox::sinks::{Routing, rabbitmq::RabbitMqSink};
use outbox_examples::sink_demo::{bank_with_events, database_path, relay_until_empty};

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
    relay_until_empty(&pool, sink).await?;

    let waiting = channel
        .queue_delete("bank-audit".into(), QueueDeleteOptions::default())
        .await?;
    println!("queue bank-audit held {waiting} messages");
    Ok(())
}
