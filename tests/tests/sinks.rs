//! Broker sinks against the real servers on 127.0.0.1: events recorded in committed and
//! rolled-back PostgreSQL transactions are relayed into the broker, then read back with the
//! broker's own client: exactly the committed events arrive, routed, with their headers, in
//! per-aggregate order.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::Event;
use outbox::relay::{Backoff, Message, Relay, Sink};
use outbox::sinks::{self, Routing};
use outbox_tests::{Pg, Proxy, RelayTable, amqp_queue, amqp_url, eventually};
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(60);

fn nats_url() -> String {
    std::env::var("OUTBOX_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn redis_url() -> String {
    std::env::var("OUTBOX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

const START_HINT: &str = "run `scripts/services.sh` (it starts or installs the brokers)";

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Records 60 transactions over 3 aggregates (`a0`..`a2`), every fourth rolled back, and
/// records a trace context with the first event. Returns the committed `(aggregate, n)` in order.
async fn record_mix(table: &RelayTable<Pg>) -> Vec<(String, i64)> {
    let mut committed = Vec::new();
    for n in 0..60_i64 {
        let aggregate = format!("a{}", n % 3);
        let mut tx = table.pool.begin().await.unwrap();
        let payload = serde_json::json!({ "n": n });
        let mut event =
            Event::new("account", "Numbered", Some(aggregate.clone()), &payload).unwrap();
        if n == 0 {
            event = event.header("traceparent", TRACEPARENT);
        }
        table.outbox.record(&mut *tx, &event).await.unwrap();
        if n % 4 == 3 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            committed.push((aggregate, n));
        }
    }
    committed
}

/// A relay running in the background, with a short backoff so that tests recover quickly.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start<K: Sink>(table: &RelayTable<Pg>, sink: K) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Relay::builder(table.pool.clone(), sink)
                .outbox(&table.outbox)
                .batch_size(50)
                .backoff(Backoff::new(
                    Duration::from_millis(100),
                    Duration::from_secs(1),
                ))
                .build()
                .run(async move {
                    let _ = stopped.await;
                }),
        );
        Running { stop, task }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap();
    }
}

async fn drained(table: &RelayTable<Pg>) {
    eventually(LIMIT, "the outbox to drain", || async {
        table.remaining().await == 0
    })
    .await;
}

/// Relays `table` into `sink` until the table is empty.
async fn relay_all<K: Sink>(table: &RelayTable<Pg>, sink: K) {
    let relay = Running::start(table, sink);
    drained(table).await;
    relay.stop().await;
}

/// Records `count` committed events numbered from `first`, over aggregates `a0`..`a3`; event 0
/// carries a trace context.
async fn record_numbered(table: &RelayTable<Pg>, first: i64, count: i64) -> Vec<(String, i64)> {
    let mut committed = Vec::new();
    for n in first..first + count {
        let aggregate = format!("a{}", n % 4);
        let mut tx = table.pool.begin().await.unwrap();
        let payload = serde_json::json!({ "n": n });
        let mut event = Event::new("account", "Numbered", Some(&aggregate), &payload).unwrap();
        if n == 0 {
            event = event.header("traceparent", TRACEPARENT);
        }
        table.outbox.record(&mut *tx, &event).await.unwrap();
        tx.commit().await.unwrap();
        committed.push((aggregate, n));
    }
    committed
}

/// Relays 40 events into `sink`, cutting its connections through `proxy` for two seconds after
/// the first 20 were delivered: the other 20 wait in the outbox, then follow once the broker
/// is reachable again. Returns the committed events.
async fn relay_across_an_outage<K: Sink>(
    table: &RelayTable<Pg>,
    sink: K,
    proxy: &Proxy,
) -> Vec<(String, i64)> {
    let relay = Running::start(table, sink);
    let mut committed = record_numbered(table, 0, 20).await;
    drained(table).await;
    proxy.cut();
    committed.extend(record_numbered(table, 20, 20).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        table.remaining().await > 0,
        "events were settled while the broker was unreachable"
    );
    proxy.restore();
    drained(table).await;
    relay.stop().await;
    committed
}

/// The first delivery of each event id, in arrival order: what a consumer that deduplicates
/// sees.
fn first_deliveries(received: Vec<(String, String, i64)>) -> Vec<(String, i64)> {
    let mut seen = std::collections::HashSet::new();
    received
        .into_iter()
        .filter(|(id, _, _)| seen.insert(id.clone()))
        .map(|(_, aggregate, n)| (aggregate, n))
        .collect()
}

fn addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// A sink that also keeps what it published.
struct Tee<K> {
    inner: K,
    seen: Arc<Mutex<Vec<Message>>>,
}

impl<K: Sink> Sink for Tee<K> {
    async fn publish(&self, batch: &[Message]) -> Vec<outbox::relay::Delivery> {
        let results = self.inner.publish(batch).await;
        self.seen.lock().unwrap().extend(batch.iter().cloned());
        results
    }

    fn keeps_order(&self) -> bool {
        self.inner.keeps_order()
    }
}

fn per_aggregate(events: &[(String, i64)]) -> HashMap<String, Vec<i64>> {
    let mut map: HashMap<String, Vec<i64>> = HashMap::new();
    for (aggregate, n) in events {
        map.entry(aggregate.clone()).or_default().push(*n);
    }
    map
}

fn n_of(payload: &[u8]) -> i64 {
    serde_json::from_slice::<serde_json::Value>(payload).unwrap()["n"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_receives_exactly_the_committed_events_once() {
    let table = RelayTable::<Pg>::new().await;
    let prefix = table.name.clone();
    let sink = sinks::nats::NatsSink::connect(&nats_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(
            Routing::template(&format!("{prefix}.{{aggregate_type}}.{{event_type}}")).unwrap(),
        );
    let stream_name = prefix.to_uppercase();
    let stream = sink
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();

    let committed = record_mix(&table).await;
    let relayed = Arc::new(Mutex::new(Vec::new()));
    relay_all(
        &table,
        Tee {
            inner: sink.clone(),
            seen: relayed.clone(),
        },
    )
    .await;

    let info = stream.get_info().await.unwrap();
    assert_eq!(info.state.messages, committed.len() as u64);
    let mut received = Vec::new();
    for seq in 1..=info.state.messages {
        let message = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(
            message.subject.as_str(),
            format!("{prefix}.account.Numbered")
        );
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .unwrap_or_else(|| panic!("no {name} header"))
                .as_str()
                .to_owned()
        };
        assert_eq!(header("Nats-Msg-Id"), header(sinks::EVENT_ID));
        assert_eq!(header(sinks::EVENT_TYPE), "Numbered");
        assert_eq!(header(sinks::AGGREGATE_TYPE), "account");
        let n = n_of(&message.payload);
        if n == 0 {
            assert_eq!(header("traceparent"), TRACEPARENT);
        }
        received.push((header(sinks::AGGREGATE_ID), n));
    }
    assert_eq!(per_aggregate(&received), per_aggregate(&committed));

    // The same events relayed again (a relay crash after publishing, before settling): the
    // stream's duplicate window drops them all.
    let again = relayed.lock().unwrap().clone();
    assert_eq!(again.len(), committed.len());
    let results = sink.publish(&again).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let info = stream.get_info().await.unwrap();
    assert_eq!(
        info.state.messages,
        committed.len() as u64,
        "redelivered events were stored twice"
    );

    sink.jetstream().delete_stream(&stream_name).await.unwrap();
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_receive_exactly_the_committed_events() {
    let table = RelayTable::<Pg>::new().await;
    let prefix = table.name.clone();
    let sink = sinks::redis::RedisSink::connect(&redis_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(Routing::template(&format!("{prefix}:{{aggregate_type}}")).unwrap());
    let committed = record_mix(&table).await;
    relay_all(&table, sink).await;

    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}:account");
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(entries.len(), committed.len());
    let mut received = Vec::new();
    for (_, fields) in &entries {
        // The documented naming, shared with the webhook's elements.
        let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut expected = vec![
            "aggregate_id",
            "aggregate_type",
            "content_type",
            "event_type",
            "id",
            "payload",
        ];
        if fields.contains_key("headers") {
            expected.push("headers");
            expected.sort_unstable();
        }
        assert_eq!(names, expected);
        assert_eq!(fields["event_type"], "Numbered");
        assert_eq!(fields["content_type"], "application/json");
        assert_eq!(fields["aggregate_type"], "account");
        assert!(fields["id"].parse::<uuid::Uuid>().is_ok());
        let n = n_of(fields["payload"].as_bytes());
        if n == 0 {
            assert!(fields["headers"].contains("traceparent"), "{fields:?}");
        }
        received.push((fields["aggregate_id"].clone(), n));
    }
    assert_eq!(per_aggregate(&received), per_aggregate(&committed));
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    table.drop_table().await;
}

#[tokio::test]
async fn unreachable_brokers_fail_at_start_up_with_a_clear_error() {
    let error = sinks::nats::NatsSink::connect("nats://127.0.0.1:1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("NATS JetStream sink: cannot connect to nats://127.0.0.1:1"),
        "{error}"
    );
    let error = sinks::redis::RedisSink::connect("redis://127.0.0.1:1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("Redis Streams sink: cannot connect to redis://127.0.0.1:1"),
        "{error}"
    );
    let error = sinks::redis::RedisSink::connect("http://nowhere")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("Redis Streams sink: invalid URL"),
        "{error}"
    );
}

const MQTT_PORT: u16 = 1883;
const KAFKA_PORT: u16 = 9092;

/// Everything in `queue`: `(event id, aggregate id, n)`, checking each message's properties.
async fn amqp_drain(channel: &lapin::Channel, queue: &str) -> Vec<(String, String, i64)> {
    use lapin::options::BasicGetOptions;
    let mut received = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let delivery = &message.delivery;
        let properties = &delivery.properties;
        assert_eq!(delivery.routing_key.as_str(), "Numbered");
        assert_eq!(*properties.delivery_mode(), Some(2), "not persistent");
        assert_eq!(
            properties.kind().as_ref().map(|kind| kind.as_str()),
            Some("Numbered")
        );
        let headers: HashMap<String, String> = properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .iter()
            .map(|(name, value)| match value {
                lapin::types::AMQPValue::LongString(text) => (name.to_string(), text.to_string()),
                other => panic!("header {name} is {other:?}"),
            })
            .collect();
        let id = properties.message_id().as_ref().unwrap().to_string();
        assert_eq!(headers[sinks::EVENT_ID], id);
        assert_eq!(headers[sinks::AGGREGATE_TYPE], "account");
        let n = n_of(&delivery.data);
        if n == 0 {
            assert_eq!(headers["traceparent"], TRACEPARENT);
        }
        received.push((id, headers[sinks::AGGREGATE_ID].clone(), n));
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_receives_exactly_the_committed_events_persistent_and_confirmed() {
    let table = RelayTable::<Pg>::new().await;
    let exchange = format!("{}.account", table.name);
    let (_connection, channel, queue) = amqp_queue(&exchange).await;
    let sink = sinks::rabbitmq::RabbitMqSink::connect(&amqp_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .exchange(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap());
    let committed = record_mix(&table).await;
    relay_all(&table, sink).await;

    let received = amqp_drain(&channel, &queue).await;
    assert_eq!(received.len(), committed.len());
    assert_eq!(
        per_aggregate(&first_deliveries(received)),
        per_aggregate(&committed)
    );
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_sink_survives_a_lost_connection() {
    let table = RelayTable::<Pg>::new().await;
    let exchange = format!("{}.account", table.name);
    let (_connection, channel, queue) = amqp_queue(&exchange).await;
    let proxy = Proxy::start(addr(5672)).await;
    let sink =
        sinks::rabbitmq::RabbitMqSink::connect(&format!("amqp://guest:guest@{}/%2f", proxy.addr))
            .await
            .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
            .exchange(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap());
    let committed = relay_across_an_outage(&table, sink, &proxy).await;
    let received = first_deliveries(amqp_drain(&channel, &queue).await);
    assert_eq!(per_aggregate(&received), per_aggregate(&committed));
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    table.drop_table().await;
}

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

async fn kafka_topic(bootstrap: &str, topic: &str, partitions: i32) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sink_survives_a_lost_connection() {
    let table = RelayTable::<Pg>::new().await;
    let prefix = table.name.clone();
    let proxy = Proxy::start(addr(4222)).await;
    let sink = sinks::nats::NatsSink::connect(&format!("nats://{}", proxy.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(Routing::template(&format!("{prefix}.{{aggregate_type}}")).unwrap());
    let stream_name = prefix.to_uppercase();
    let stream = sink
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    let committed = relay_across_an_outage(&table, sink.clone(), &proxy).await;
    let info = stream.get_info().await.unwrap();
    assert_eq!(
        info.state.messages,
        committed.len() as u64,
        "duplicates in the stream"
    );
    let mut received = Vec::new();
    for seq in 1..=info.state.messages {
        let message = stream.get_raw_message(seq).await.unwrap();
        let header = |name: &str| message.headers.get(name).unwrap().as_str().to_owned();
        received.push((
            header(sinks::EVENT_ID),
            header(sinks::AGGREGATE_ID),
            n_of(&message.payload),
        ));
    }
    assert_eq!(
        per_aggregate(&first_deliveries(received)),
        per_aggregate(&committed)
    );
    sink.jetstream().delete_stream(&stream_name).await.unwrap();
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sink_survives_a_lost_connection() {
    let table = RelayTable::<Pg>::new().await;
    let proxy = Proxy::start(addr(6379)).await;
    let key = format!("{}:account", table.name);
    let sink = sinks::redis::RedisSink::connect(&format!("redis://{}", proxy.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(Routing::template(&format!("{}:{{aggregate_type}}", table.name)).unwrap());
    let committed = relay_across_an_outage(&table, sink, &proxy).await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    let received = entries
        .iter()
        .map(|(_, fields)| {
            (
                fields["id"].clone(),
                fields["aggregate_id"].clone(),
                n_of(fields["payload"].as_bytes()),
            )
        })
        .collect();
    assert_eq!(
        per_aggregate(&first_deliveries(received)),
        per_aggregate(&committed)
    );
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    table.drop_table().await;
}

const SECRET: &[u8] = b"webhook test secret";

/// A webhook receiver that verifies each request's signature, keeps the events, and refuses
/// (422) any request holding an event whose payload has `"poison": true`. It runs on a runtime
/// of its own, in a thread: [`Receiver::kill`] drops that runtime, and every connection with it.
struct Receiver {
    port: u16,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    refused_signatures: Arc<std::sync::atomic::AtomicUsize>,
    /// While above zero, each request is answered 503 and counted down.
    unavailable: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests accepted (answered 200).
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct ReceiverState {
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    refused_signatures: Arc<std::sync::atomic::AtomicUsize>,
    unavailable: Arc<std::sync::atomic::AtomicUsize>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

async fn receive(
    axum::extract::State(state): axum::extract::State<ReceiverState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    use outbox::sinks::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, verify};
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let checked = verify(
        SECRET,
        &header(TIMESTAMP_HEADER),
        &header(SIGNATURE_HEADER),
        &body,
        Duration::from_secs(300),
        std::time::SystemTime::now(),
    );
    let busy = state.unavailable.fetch_update(
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
        |left| left.checked_sub(1),
    );
    if busy.is_ok() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if checked.is_err() {
        state
            .refused_signatures
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(events) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if events
        .iter()
        .any(|event| event["payload"]["poison"] == true)
    {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    state.events.lock().unwrap().extend(events);
    state
        .accepted
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    StatusCode::OK
}

impl Receiver {
    /// Starts on `port` (0: a free one), keeping the events in `events`.
    fn start(port: u16, events: Arc<Mutex<Vec<serde_json::Value>>>) -> Receiver {
        let refused_signatures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let unavailable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let state = ReceiverState {
            events: events.clone(),
            refused_signatures: refused_signatures.clone(),
            unavailable: unavailable.clone(),
            accepted: accepted.clone(),
        };
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/hook", axum::routing::post(receive).head(|| async { "" }))
                    .with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
            runtime.block_on(async {
                while stopped.try_recv() == Err(std::sync::mpsc::TryRecvError::Empty) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            // Dropping the runtime drops the listener and every open connection.
        });
        Receiver {
            port,
            events,
            refused_signatures,
            unavailable,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn kill(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }

    fn received(&self) -> Vec<(String, String, i64)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|event| {
                (
                    event["id"].as_str().unwrap().to_owned(),
                    event["aggregate_id"].as_str().unwrap().to_owned(),
                    event["payload"]["n"].as_i64().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The webhook keeps order (requests in sequence, an aggregate's events in array order), so an
/// aggregate's consecutive events share requests: 200 events of one aggregate are 2 requests of
/// 100, not 200 round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sends_one_aggregates_events_together_in_order() {
    let table = RelayTable::<Pg>::new().await;
    let receiver = Receiver::start(0, Arc::default());
    let sink = sinks::webhook::WebhookSink::connect(&receiver.url(), SECRET)
        .await
        .unwrap()
        .max_events(100);
    let mut tx = table.pool.begin().await.unwrap();
    for n in 0..200_i64 {
        let event = Event::new(
            "account",
            "Numbered",
            Some("solo"),
            &serde_json::json!({ "n": n }),
        )
        .unwrap();
        table.outbox.record(&mut *tx, &event).await.unwrap();
    }
    tx.commit().await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(table.pool.clone(), sink)
            .outbox(&table.outbox)
            .batch_size(500)
            .build()
            .run(async move {
                let _ = stopped.await;
            }),
    );
    drained(&table).await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    let received: Vec<i64> = receiver.received().into_iter().map(|(_, _, n)| n).collect();
    assert_eq!(received, (0..200).collect::<Vec<_>>());
    assert_eq!(
        receiver.accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one aggregate's events travel together"
    );
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_gets_exactly_the_committed_events_signed_in_batches() {
    let table = RelayTable::<Pg>::new().await;
    let receiver = Receiver::start(0, Arc::default());
    let sink = sinks::webhook::WebhookSink::connect(&receiver.url(), SECRET)
        .await
        .unwrap()
        .max_events(7);
    let committed = record_mix(&table).await;
    relay_all(&table, sink).await;

    let events = receiver.events.lock().unwrap().clone();
    assert_eq!(events.len(), committed.len());
    for event in &events {
        // The documented naming, shared with the Redis entries.
        let mut names: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        let mut expected = vec![
            "aggregate_id",
            "aggregate_type",
            "event_type",
            "id",
            "payload",
        ];
        if event.get("headers").is_some() {
            expected.push("headers");
            expected.sort_unstable();
        }
        assert_eq!(names, expected);
        assert_eq!(event["event_type"], "Numbered");
        assert_eq!(event["aggregate_type"], "account");
        if event["payload"]["n"] == 0 {
            assert_eq!(event["headers"]["traceparent"], TRACEPARENT);
        }
    }
    assert_eq!(
        per_aggregate(&first_deliveries(receiver.received())),
        per_aggregate(&committed)
    );
    assert_eq!(
        receiver
            .refused_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // What the receiver does with a request that was not signed with its secret, or whose
    // body was altered after signing.
    use outbox::sinks::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
    let client = sinks::webhook::reqwest::Client::new();
    let body = r#"[{"id":"x","aggregate_id":"a0","payload":{"n":1000}}]"#;
    for (secret, sent) in [
        (SECRET, body.replace("1000", "1001")),
        (b"another secret".as_slice(), body.to_owned()),
    ] {
        let (timestamp, signature) = sign(secret, std::time::SystemTime::now(), body.as_bytes());
        let response = client
            .post(receiver.url())
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature)
            .body(sent)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
    }
    assert_eq!(
        receiver
            .refused_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_eq!(receiver.events.lock().unwrap().len(), committed.len());
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sink_catches_up_after_the_receiver_was_killed() {
    let table = RelayTable::<Pg>::new().await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(0, events.clone());
    let port = receiver.port;
    let sink = sinks::webhook::WebhookSink::connect(&receiver.url(), SECRET)
        .await
        .unwrap()
        .retries(2, Duration::from_millis(50));
    let relay = Running::start(&table, sink);
    let mut committed = record_numbered(&table, 0, 20).await;
    drained(&table).await;
    receiver.kill();
    committed.extend(record_numbered(&table, 20, 20).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        table.remaining().await,
        20,
        "delivered while the receiver was down"
    );
    let receiver = Receiver::start(port, events);
    drained(&table).await;
    relay.stop().await;
    assert_eq!(
        per_aggregate(&first_deliveries(receiver.received())),
        per_aggregate(&committed)
    );
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_refusal_dead_letters_only_the_event_at_fault() {
    let table = RelayTable::<Pg>::new().await;
    let receiver = Receiver::start(0, Arc::default());
    let sink = sinks::webhook::WebhookSink::connect(&receiver.url(), SECRET)
        .await
        .unwrap();
    for n in 0..10_i64 {
        let mut tx = table.pool.begin().await.unwrap();
        let payload = serde_json::json!({ "n": n, "poison": n == 6 });
        let event = Event::new("account", "Numbered", Some(format!("a{n}")), &payload).unwrap();
        table.outbox.record(&mut *tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }
    let relay = Running::start(&table, sink);
    eventually(LIMIT, "nine events delivered", || async {
        receiver.events.lock().unwrap().len() == 9
    })
    .await;
    eventually(LIMIT, "the poison event dead-lettered", || async {
        table
            .outbox
            .dead_letters(&table.pool, 10)
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    relay.stop().await;
    let dead = table.outbox.dead_letters(&table.pool, 10).await.unwrap();
    assert_eq!(dead[0].message.aggregate_id, "a6");
    assert_eq!(dead[0].message.attempts, 1, "a refusal is not retried");
    let mut delivered: Vec<i64> = receiver.received().iter().map(|(_, _, n)| *n).collect();
    delivered.sort_unstable();
    assert_eq!(delivered, vec![0, 1, 2, 3, 4, 5, 7, 8, 9]);
    table.drop_table().await;
}

#[tokio::test]
async fn more_unreachable_or_misconfigured_sinks_fail_at_start_up() {
    let error = sinks::rabbitmq::RabbitMqSink::connect("amqp://guest:guest@127.0.0.1:1/%2f")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("RabbitMQ sink: cannot connect to amqp://"),
        "{error}"
    );
    let error = sinks::rabbitmq::RabbitMqSink::connect("amqp://guest:wrong@127.0.0.1:5672/%2f")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("RabbitMQ sink: cannot connect to amqp://"),
        "{error}"
    );
    let error = sinks::mqtt::MqttSink::connect("mqtt://127.0.0.1:1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("MQTT sink: cannot connect to 127.0.0.1:1"),
        "{error}"
    );
    let error = sinks::mqtt::MqttSink::connect("http://127.0.0.1:1883")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("MQTT sink: invalid URL"), "{error}");
    let error = sinks::kafka::KafkaSink::connect("127.0.0.1:1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("Kafka sink: cannot reach 127.0.0.1:1"),
        "{error}"
    );
    let error = sinks::webhook::WebhookSink::connect("http://127.0.0.1:1/hook", SECRET)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("webhook sink: http://127.0.0.1:1/hook does not answer"),
        "{error}"
    );
    let error = sinks::webhook::WebhookSink::connect("ftp://127.0.0.1/hook", SECRET)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("is not an http:// or https:// URL"),
        "{error}"
    );
    let error = sinks::webhook::WebhookSink::connect("http://127.0.0.1:1/hook", b"")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(error, "webhook sink: the signing secret is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_a_receiver_that_answers_503() {
    use std::sync::atomic::Ordering::SeqCst;
    let table = RelayTable::<Pg>::new().await;
    let receiver = Receiver::start(0, Arc::default());
    // Five 503s: two in-call retries of the first call fail, then the relay's retries.
    receiver.unavailable.store(5, SeqCst);
    let sink = sinks::webhook::WebhookSink::connect(&receiver.url(), SECRET)
        .await
        .unwrap()
        .retries(2, Duration::from_millis(20));
    let committed = record_numbered(&table, 0, 12).await;
    relay_all(&table, sink).await;
    assert_eq!(
        receiver.unavailable.load(SeqCst),
        0,
        "the 503s were not all met"
    );
    assert_eq!(
        per_aggregate(&first_deliveries(receiver.received())),
        per_aggregate(&committed)
    );
    assert!(
        table
            .outbox
            .dead_letters(&table.pool, 10)
            .await
            .unwrap()
            .is_empty(),
        "a 503 is not a reason to give up"
    );
    table.drop_table().await;
}

/// By default an event no queue is bound to receive is returned by the broker: retried, then a
/// dead letter with the broker's reason, never confirmed and deleted unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_event_without_a_queue_is_retried_then_dead_not_lost() {
    let table = RelayTable::<Pg>::new().await;
    let sink = sinks::rabbitmq::RabbitMqSink::connect(&amqp_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        // No queue is bound to this exchange; the sink's defaults otherwise.
        .exchange(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap());
    record_numbered(&table, 0, 3).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(table.pool.clone(), sink)
            .outbox(&table.outbox)
            .max_attempts(2)
            .backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(50),
            ))
            .build()
            .run(async move {
                let _ = stopped.await;
            }),
    );
    eventually(
        LIMIT,
        "the unroutable events to be dead-lettered",
        || async {
            table
                .outbox
                .dead_letters(&table.pool, 10)
                .await
                .unwrap()
                .len()
                == 3
        },
    )
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    for dead in table.outbox.dead_letters(&table.pool, 10).await.unwrap() {
        assert!(dead.last_error.contains("NO_ROUTE"), "{}", dead.last_error);
        assert_eq!(dead.message.attempts, 2, "retried before it was given up");
    }
    delete_exchange(&format!("{}.account", table.name)).await;
    table.drop_table().await;
}

/// `mandatory(false)` is the opt-out for fire-and-forget exchanges: the broker confirms an
/// unroutable event and it leaves the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_without_mandatory_drops_unroutable_events_as_asked() {
    let table = RelayTable::<Pg>::new().await;
    let sink = sinks::rabbitmq::RabbitMqSink::connect(&amqp_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .exchange(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap())
        .mandatory(false);
    record_numbered(&table, 0, 3).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(table.pool.clone(), sink)
            .outbox(&table.outbox)
            .build()
            .run(async move {
                let _ = stopped.await;
            }),
    );
    eventually(LIMIT, "the outbox to empty", || async {
        table.remaining().await == 0
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    assert!(
        table
            .outbox
            .dead_letters(&table.pool, 10)
            .await
            .unwrap()
            .is_empty()
    );
    delete_exchange(&format!("{}.account", table.name)).await;
    table.drop_table().await;
}

async fn delete_exchange(name: &str) {
    let (_connection, channel, _) = amqp_queue(name).await;
    channel
        .exchange_delete(name.into(), Default::default())
        .await
        .unwrap();
}
