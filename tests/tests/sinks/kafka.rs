//! Kafka (tansu): events keyed by aggregate, read back with rdkafka; a broker of the test's
//! own that goes away and comes back.

use super::*;

pub(super) async fn kafka_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap_or_else(|e| panic!("Kafka on {bootstrap}: {e}; {START_HINT}"));
    for result in results {
        result.unwrap();
    }
}

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

/// A tansu broker of this test's own, in memory, advertising `advertised` (a proxy in front of
/// it) to its clients. Killed when dropped.
struct OwnKafka {
    _child: tokio::process::Child,
}

impl OwnKafka {
    async fn start(listen: u16, advertised: std::net::SocketAddr) -> OwnKafka {
        let home = std::env::var("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo")
            });
        let installed = home.join("bin/tansu");
        let program = if installed.exists() {
            installed
        } else {
            "tansu".into()
        };
        let child = tokio::process::Command::new(&program)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{listen}"),
                "--advertised-listener-url",
                &format!("tcp://{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {START_HINT}", program.display()));
        eventually(LIMIT, "tansu to listen", || async {
            tokio::net::TcpStream::connect(addr(listen)).await.is_ok()
        })
        .await;
        OwnKafka { _child: child }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_survives_a_lost_connection() {
    let table = RelayTable::<Pg>::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let broker = free_port();
    let _kafka = OwnKafka::start(broker, proxy_addr).await;
    let proxy = Proxy::on(listener, addr(broker));
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
