//! Relays the outbox into an MQTT broker, QoS 1, then consumes it exactly once: a subscriber in
//! a persistent session applies each message through the inbox and sends its `PUBACK` only
//! after the commit. A second delivery of each message is skipped by the inbox.
//!
//! ```text
//! cargo run -p outbox-examples --features mqtt --bin sink-mqtt        # an MQTT 5 broker on 127.0.0.1:1883
//! ```

use outbox::inbox::InboxMessage;
use outbox::inbox::mqtt::MqttConsumer;
use outbox::sinks::{Routing, mqtt::MqttSink};
use outbox_examples::sink_demo::{ReadModel, bank_with_events, database_path, relay_until_empty};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-mqtt")).await?;
    let url = std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into());
    // The consuming service subscribes first: MQTT keeps messages for sessions, not topics. Its
    // session (named by the client id) outlives the connection, so what is published while it
    // is away waits for it.
    let session = format!("{url}?client_id={}", ReadModel::CONSUMER);
    let consumer = MqttConsumer::connect(&session, "bank/account/#").await?;
    let sink = MqttSink::connect(&url)
        .await?
        .routing(Routing::template("bank/{aggregate_type}/{aggregate_id}")?);
    let published = relay_until_empty(&pool, sink).await?;

    let mut model = ReadModel::new(&pool, published).await?;
    tokio::time::timeout(ReadModel::PATIENCE, async {
        while !model.has_all() {
            let message = consumer.next().await.ok_or("the MQTT consumer closed")?;
            let (id, payload) = (message.message_id()?, message.payload.to_vec());
            let handler = model.apply(&id, &payload);
            let inbox = &ReadModel::INBOX;
            let outcome = consumer
                .process(inbox, model.pool(), ReadModel::CONSUMER, &message, handler)
                .await?;
            if outcome.is_duplicate() {
                println!("message {id} came twice: skipped by the inbox");
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await
    .map_err(|_| "the MQTT broker did not deliver every published event in time")??;
    model.redeliver_and_print().await?;
    Ok(())
}
