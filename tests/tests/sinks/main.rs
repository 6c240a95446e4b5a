//! Broker sinks against the real servers on 127.0.0.1: events recorded in committed and
//! rolled-back PostgreSQL transactions are relayed into the broker, then read back with the
//! broker's own client: exactly the committed events arrive, routed, with their headers, in
//! per-aggregate order. One module per broker; the helpers they share and the start-up checks
//! of every sink are here.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::Event;
use outbox::relay::{Backoff, Message, Relay, Sink};
use outbox::sinks::{self, Routing};
use outbox_tests::{Pg, Proxy, RelayTable, amqp_queue, amqp_url, eventually};
use tokio::sync::oneshot;

mod audit;
mod kafka;
mod mqtt;
mod nats;
mod rabbitmq;
mod redis;
mod webhook;

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

/// The webhook tests' signing secret.
/// A Standard Webhooks secret: `whsec_` and the key in base64.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const MQTT_PORT: u16 = 1883;
const KAFKA_PORT: u16 = 9092;

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
    for secret in ["", "whsec_", "plain words"] {
        let error = sinks::webhook::WebhookSink::connect("http://127.0.0.1:1/hook", secret)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "webhook sink: the webhook secret is not `whsec_` followed by base64 (as Standard Webhooks write them)",
            "{secret:?}"
        );
    }
}
