//! MQTT 5 (Mosquitto): QoS 1 deliveries read by a rumqttc subscriber; a lost connection.

use super::*;

/// An MQTT 5 subscriber to `filter` on 127.0.0.1:`port`, collecting `(topic, event id,
/// aggregate id, n)`; returns once the subscription is acknowledged.
async fn mqtt_subscriber(
    filter: &str,
) -> (
    Arc<Mutex<Vec<(String, String, String, i64)>>>,
    tokio::task::JoinHandle<()>,
) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
    let options = MqttOptions::new(
        format!("sub-{}", uuid::Uuid::now_v7()),
        "127.0.0.1",
        MQTT_PORT,
    );
    let (client, mut events) = AsyncClient::new(options, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        match events.poll().await {
            Ok(MqttEvent::Incoming(Packet::SubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("MQTT subscriber: {e}; {START_HINT}"),
        }
    }
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let task = tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = events.poll().await {
            if let MqttEvent::Incoming(Packet::Publish(publish)) = event {
                let properties = publish.properties.unwrap();
                let property = |name: &str| {
                    properties
                        .user_properties
                        .iter()
                        .find(|(key, _)| key == name)
                        .map(|(_, value)| value.clone())
                        .unwrap_or_else(|| panic!("no user property {name}"))
                };
                assert_eq!(properties.content_type.as_deref(), Some("application/json"));
                assert_eq!(property(sinks::EVENT_TYPE), "Numbered");
                let n = n_of(&publish.payload);
                if n == 0 {
                    assert_eq!(property("traceparent"), TRACEPARENT);
                }
                sink.lock().unwrap().push((
                    String::from_utf8(publish.topic.to_vec()).unwrap(),
                    property(sinks::EVENT_ID),
                    property(sinks::AGGREGATE_ID),
                    n,
                ));
            }
        }
    });
    (received, task)
}

fn mqtt_events(
    received: &Mutex<Vec<(String, String, String, i64)>>,
    topic: &str,
) -> Vec<(String, String, i64)> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(got, id, aggregate, n)| {
            assert_eq!(got, topic);
            (id.clone(), aggregate.clone(), *n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_receives_exactly_the_committed_events_with_qos_1() {
    let table = RelayTable::<Pg>::new().await;
    let (received, subscriber) = mqtt_subscriber(&format!("{}/#", table.name)).await;
    let sink = sinks::mqtt::MqttSink::connect(&format!("mqtt://127.0.0.1:{MQTT_PORT}"))
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(
            Routing::template(&format!("{}/{{aggregate_type}}/{{event_type}}", table.name))
                .unwrap(),
        );
    let committed = record_mix(&table).await;
    relay_all(&table, sink).await;
    eventually(LIMIT, "the subscriber to receive every event", || async {
        received.lock().unwrap().len() >= committed.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = mqtt_events(&received, &format!("{}/account/Numbered", table.name));
    assert_eq!(events.len(), committed.len());
    assert_eq!(
        per_aggregate(&first_deliveries(events)),
        per_aggregate(&committed)
    );
    subscriber.abort();
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sink_survives_a_lost_connection() {
    let table = RelayTable::<Pg>::new().await;
    let (received, subscriber) = mqtt_subscriber(&format!("{}/#", table.name)).await;
    let proxy = Proxy::start(addr(MQTT_PORT)).await;
    let sink = sinks::mqtt::MqttSink::connect(&format!("mqtt://{}", proxy.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(
            Routing::template(&format!("{}/{{aggregate_type}}/{{event_type}}", table.name))
                .unwrap(),
        );
    let committed = relay_across_an_outage(&table, sink, &proxy).await;
    eventually(LIMIT, "the subscriber to receive every event", || async {
        first_deliveries(mqtt_events(
            &received,
            &format!("{}/account/Numbered", table.name),
        ))
        .len()
            >= committed.len()
    })
    .await;
    let events = mqtt_events(&received, &format!("{}/account/Numbered", table.name));
    assert_eq!(
        per_aggregate(&first_deliveries(events)),
        per_aggregate(&committed)
    );
    subscriber.abort();
    table.drop_table().await;
}
