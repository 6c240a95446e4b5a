//! Kafka (tansu): events keyed by aggregate, read back with rdkafka; a broker of the test's
//! own that goes away and comes back.

use super::*;
use outbox_tests::{Tansu, free_port, kafka_topic};

/// Reads `count` records of `topic` from the start: `(event id, aggregate id, n)`, checking
/// that the key is the aggregate id and that each key stays in one partition.
async fn kafka_read(bootstrap: &str, topic: &str, count: usize) -> Vec<(String, String, i64)> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("g-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut received = Vec::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    while received.len() < count {
        let message = tokio::time::timeout(LIMIT, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} records arrived", received.len()))
            .unwrap();
        let headers: HashMap<String, String> = message
            .headers()
            .unwrap()
            .iter()
            .map(|header| {
                (
                    header.key.to_owned(),
                    String::from_utf8(header.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        assert_eq!(
            headers[sinks::AGGREGATE_ID],
            key,
            "the key is the aggregate id"
        );
        assert_eq!(headers[sinks::EVENT_TYPE], "Numbered");
        assert_eq!(headers["content-type"], "application/json");
        let partition = *partition_of
            .entry(key.clone())
            .or_insert(message.partition());
        assert_eq!(
            partition,
            message.partition(),
            "{key} spread over partitions"
        );
        let n = n_of(message.payload().unwrap());
        if n == 0 {
            assert_eq!(headers["traceparent"], TRACEPARENT);
        }
        received.push((headers[sinks::EVENT_ID].clone(), key, n));
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_receives_exactly_the_committed_events_keyed_by_aggregate() {
    let table = RelayTable::<Pg>::new().await;
    let bootstrap = format!("127.0.0.1:{KAFKA_PORT}");
    let topic = format!("{}.account", table.name);
    kafka_topic(&bootstrap, &topic, 3).await;
    let sink = sinks::kafka::KafkaSink::connect(&bootstrap)
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap());
    let committed = record_mix(&table).await;
    relay_all(&table, sink).await;
    let received = kafka_read(&bootstrap, &topic, committed.len()).await;
    assert_eq!(
        per_aggregate(&first_deliveries(received)),
        per_aggregate(&committed)
    );
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_survives_a_lost_connection() {
    let table = RelayTable::<Pg>::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let kafka = Tansu::start(free_port(), proxy_addr);
    let proxy = Proxy::on(listener, addr(kafka.port()));
    let bootstrap = proxy.addr.to_string();
    let topic = format!("{}.account", table.name);
    kafka_topic(&bootstrap, &topic, 3).await;
    let sink = sinks::kafka::KafkaSink::connect(&bootstrap)
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap());
    let committed = relay_across_an_outage(&table, sink, &proxy).await;
    let received = kafka_read(&bootstrap, &topic, committed.len()).await;
    assert_eq!(
        per_aggregate(&first_deliveries(received)),
        per_aggregate(&committed)
    );
    table.drop_table().await;
}
