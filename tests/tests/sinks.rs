//! Broker sinks against the real servers on 127.0.0.1: events recorded in committed and
//! rolled-back PostgreSQL transactions are relayed into the broker, then read back with the
//! broker's own client: exactly the committed events arrive, routed, with their headers, in
//! per-aggregate order.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::Event;
use outbox_core::relay::{Message, Relay, Sink};
use outbox_core::sinks::{self, Routing};
use outbox_tests::{Pg, RelayTable, eventually};
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(60);

fn nats_url() -> String {
    std::env::var("OUTBOX_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn redis_url() -> String {
    std::env::var("OUTBOX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

const START_HINT: &str = "run `scripts/services.sh` (it starts or installs the brokers)";

/// Records 60 transactions over 3 aggregates (`a0`..`a2`), every fourth rolled back, and puts
/// a trace context on the first event. Returns the committed `(aggregate, n)` in order.
async fn record_mix(table: &RelayTable<Pg>) -> Vec<(String, i64)> {
    let mut committed = Vec::new();
    for n in 0..60_i64 {
        let aggregate = format!("a{}", n % 3);
        let mut tx = table.pool.begin().await.unwrap();
        let payload = serde_json::json!({ "n": n });
        let event = Event::new("account", "Numbered", Some(aggregate.clone()), &payload).unwrap();
        table.outbox.record(&mut *tx, &event).await.unwrap();
        if n % 4 == 3 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            committed.push((aggregate, n));
        }
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {} SET headers = '{{\"traceparent\": \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"}}' \
         WHERE payload->>'n' = '0'",
        table.name
    )))
    .execute(&table.pool)
    .await
    .unwrap();
    committed
}

/// Relays `table` into `sink` until the table is empty.
async fn relay_all<K: Sink>(table: &RelayTable<Pg>, sink: K) {
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(table.pool.clone(), sink)
            .outbox(&table.outbox)
            .build()
            .run(async move {
                let _ = stopped.await;
            }),
    );
    eventually(LIMIT, "the outbox to drain", || async {
        table.remaining().await == 0
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();
}

/// A sink that also keeps what it published.
struct Tee<K> {
    inner: K,
    seen: Arc<Mutex<Vec<Message>>>,
}

impl<K: Sink> Sink for Tee<K> {
    async fn publish(&self, batch: &[Message]) -> Vec<outbox_core::relay::Delivery> {
        let results = self.inner.publish(batch).await;
        self.seen.lock().unwrap().extend(batch.iter().cloned());
        results
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
            assert_eq!(
                header("traceparent"),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            );
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
        assert_eq!(fields["type"], "Numbered");
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
