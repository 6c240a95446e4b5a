//! Relays the outbox into an MQTT broker, QoS 1.
//!
//! ```text
//! cargo run -p outbox-examples --features mqtt --bin sink-mqtt        # an MQTT 5 broker on 127.0.0.1:1883
//! ```

use outbox::sinks::{Routing, mqtt::MqttSink};
use outbox_examples::sink_demo::{bank_with_events, database_path, relay_until_empty};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-mqtt")).await?;
    let url = std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into());
    let sink = MqttSink::connect(&url)
        .await?
        .routing(Routing::template("bank/{aggregate_type}/{aggregate_id}")?);
    relay_until_empty(&pool, sink).await?;
    Ok(())
}
