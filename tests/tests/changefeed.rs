//! The CockroachDB changefeed receiver, driven by a test client that behaves as CockroachDB's
//! webhook sink does (CockroachDB itself cannot be installed here): batches of several rows in
//! the documented `wrapped` envelope, a batch retried after a 503, overlapping replays from an
//! older checkpoint, resolved messages, a key updated twice, and refusals of what is not a
//! changefeed request. The sink is NATS JetStream behind a proxy, cut in the middle; what the
//! stream holds at the end is read with NATS's own client.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outbox::changefeed::{ChangefeedError, Hlc, Receiver, ReceiverConfig};
use outbox::relay::{HandlerSink, Message, Sink, SinkError};
use outbox::sinks::{self, Routing};
use outbox_tests::Proxy;
use serde_json::{Value, json};

const SECRET: &str = "Bearer changefeed-test-secret";

/// One committed outbox row as a changefeed carries it.
#[derive(Clone)]
struct Row {
    id: uuid::Uuid,
    /// The primary key, as the changefeed's `key` (the id's, unless a test changes it).
    key: String,
    aggregate: String,
    n: i64,
    updated: Hlc,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "after": {
                "id": self.id.to_string(),
                "aggregate_type": "account",
                "aggregate_id": self.aggregate,
                "event_type": "Numbered",
                "payload": { "n": self.n },
                "headers": null,
                "created_at": "2026-12-04T10:00:00.000000Z",
            },
            "key": [self.key],
            "topic": "outbox",
            "updated": self.updated.to_string(),
        })
    }
}

/// `count` rows over `aggregates` aggregates, committed one after the other.
fn rows(count: i64, aggregates: i64) -> Vec<Row> {
    let start: i128 = 1_733_300_000_000_000_000;
    (0..count)
        .map(|_| uuid::Uuid::now_v7())
        .zip(0..count)
        .map(|(id, n)| Row {
            id,
            key: id.to_string(),
            aggregate: format!("a{}", n % aggregates),
            n,
            updated: Hlc {
                wall: start + i128::from(n) * 1_000,
                logical: 0,
            },
        })
        .collect()
}

/// The body CockroachDB's webhook sink sends for `rows`.
fn batch(rows: &[Row]) -> Vec<u8> {
    let payload: Vec<Value> = rows.iter().map(Row::json).collect();
    serde_json::to_vec(&json!({ "payload": payload, "length": rows.len() })).unwrap()
}

fn nats_url() -> String {
    std::env::var("OUTBOX_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changefeed_rows_reach_nats_once_in_order_through_retries_replays_and_an_outage() {
    let prefix = format!("changefeed_{}", uuid::Uuid::now_v7().simple());
    let direct = async_nats::connect(nats_url())
        .await
        .unwrap_or_else(|e| panic!("NATS: {e}; start it with scripts/services.sh"));
    let jetstream = async_nats::jetstream::new(direct);
    let stream = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: prefix.to_uppercase(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let nats_port: u16 = nats_url()
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .unwrap_or(4222);
    let proxy = Proxy::start(([127, 0, 0, 1], nats_port).into()).await;
    let sink = sinks::nats::NatsSink::connect(&format!("nats://{}", proxy.addr))
        .await
        .unwrap()
        .routing(Routing::template(&format!("{prefix}.{{aggregate_type}}")).unwrap());
    let receiver = Receiver::new(sink, ReceiverConfig::default().secret(SECRET));
    let all = rows(60, 3);
    let mut forwarded = 0;
    let mut replays = 0;

    // Three batches of ten go through.
    for chunk in all[..30].chunks(10) {
        let received = receiver.receive(Some(SECRET), &batch(chunk)).await.unwrap();
        forwarded += received.forwarded;
        assert_eq!(received.replays, 0);
    }
    assert_eq!(forwarded, 30);

    // The broker goes away: the next batch is answered 503, and CockroachDB retries it.
    proxy.cut();
    let outage = batch(&all[30..40]);
    let error = receiver.receive(Some(SECRET), &outage).await.unwrap_err();
    assert_eq!(error.status(), 503, "{error}");
    assert!(
        matches!(error, ChangefeedError::SinkFailed { .. }),
        "{error}"
    );
    proxy.restore();
    let retried = loop {
        match receiver.receive(Some(SECRET), &outage).await {
            Ok(received) => break received,
            Err(error) => {
                assert_eq!(error.status(), 503, "{error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    forwarded += retried.forwarded;
    replays += retried.replays;
    assert_eq!(retried.forwarded + retried.replays, 10);

    // The changefeed restarts from an older checkpoint: rows 20..50 come again, overlapping.
    let replayed = receiver
        .receive(Some(SECRET), &batch(&all[20..50]))
        .await
        .unwrap();
    assert_eq!(replayed.replays, 20, "rows 20..40 were forwarded already");
    assert_eq!(replayed.forwarded, 10);
    forwarded += replayed.forwarded;

    // A key updated twice (the same event, a later timestamp) is not an event again; a row
    // older than its key's last forwarded one is a replay, whatever its id (a table whose key
    // is not the id).
    let mut updated = all[5].clone();
    updated.updated.logical += 7;
    let mut stale = all[6].clone();
    stale.id = uuid::Uuid::now_v7();
    stale.updated.wall -= 1;
    assert_eq!(stale.key, all[6].id.to_string());
    let received = receiver
        .receive(Some(SECRET), &batch(&[updated, stale]))
        .await
        .unwrap();
    assert_eq!((received.forwarded, received.replays), (0, 2));

    // The rest, with a delete among them (row-level TTL removing a published row), then a
    // resolved timestamp.
    let mut body: Value = serde_json::from_slice(&batch(&all[50..])).unwrap();
    let rows_json = body["payload"].as_array_mut().unwrap();
    rows_json.push(
        json!({ "after": null, "key": [all[0].id.to_string()], "topic": "outbox",
        "updated": all[59].updated.to_string() }),
    );
    body["length"] = json!(rows_json.len());
    let received = receiver
        .receive(Some(SECRET), &serde_json::to_vec(&body).unwrap())
        .await
        .unwrap();
    assert_eq!((received.forwarded, received.deletes), (10, 1));
    forwarded += received.forwarded;
    let resolved = all[59].updated.to_string();
    let received = receiver
        .receive(
            Some(SECRET),
            &serde_json::to_vec(&json!({ "resolved": resolved })).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(received.resolved, Some(all[59].updated));
    assert_eq!(receiver.resolved(), Some(all[59].updated));

    // Every row forwarded once by the receiver; the stream holds each event, in order per
    // aggregate.
    assert_eq!(forwarded, 60, "{replays} replays");
    let info = stream.clone().get_info().await.unwrap();
    let mut seen = Vec::new();
    for seq in 1..=info.state.messages {
        let message = stream.get_raw_message(seq).await.unwrap();
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .to_owned();
        let payload: Value = serde_json::from_slice(&message.payload).unwrap();
        let aggregate = message
            .headers
            .get(sinks::AGGREGATE_ID)
            .unwrap()
            .as_str()
            .to_owned();
        if !seen.iter().any(|(seen_id, _, _)| *seen_id == id) {
            seen.push((id, aggregate, payload["n"].as_i64().unwrap()));
        }
    }
    let expected: Vec<(String, String, i64)> = all
        .iter()
        .map(|row| (row.id.to_string(), row.aggregate.clone(), row.n))
        .collect();
    assert_eq!(seen.len(), 60);
    for aggregate in ["a0", "a1", "a2"] {
        let of = |list: &[(String, String, i64)]| -> Vec<i64> {
            list.iter()
                .filter(|(_, a, _)| a == aggregate)
                .map(|(_, _, n)| *n)
                .collect()
        };
        assert_eq!(of(&seen), of(&expected), "order of {aggregate}");
    }
    jetstream
        .delete_stream(prefix.to_uppercase())
        .await
        .unwrap();
}

/// A sink counting what it was given, refusing for good the events of type `Poison`.
fn counting() -> (impl Sink, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let sink = HandlerSink::new(move |message: Message| {
        seen.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if message.event_type == "Poison" {
            Err(SinkError::permanent("refused"))
        } else {
            Ok(())
        })
    });
    (sink, count)
}

#[tokio::test]
async fn changefeed_refusals_say_why_and_forward_nothing() {
    let (sink, published) = counting();
    let receiver = Receiver::new(
        sink,
        ReceiverConfig::default()
            .secret(SECRET)
            .max_body_bytes(4_096),
    );
    let good = rows(3, 1);
    let body = batch(&good);

    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        ("no secret", None, body.clone(), 401),
        ("a wrong secret", Some("Bearer nope"), body.clone(), 401),
        (
            "a body over the cap",
            Some(SECRET),
            batch(&rows(40, 1)),
            413,
        ),
        ("not JSON", Some(SECRET), b"{\"payload\": [".to_vec(), 400),
        (
            "neither rows nor resolved",
            Some(SECRET),
            b"{}".to_vec(),
            400,
        ),
        (
            "a length that is not the rows'",
            Some(SECRET),
            serde_json::to_vec(&json!({ "payload": [good[0].json()], "length": 2 })).unwrap(),
            400,
        ),
        (
            "a row without `updated`",
            Some(SECRET),
            {
                let mut row = good[0].json();
                row.as_object_mut().unwrap().remove("updated");
                serde_json::to_vec(&json!({ "payload": [row], "length": 1 })).unwrap()
            },
            400,
        ),
        (
            "a good row then one that is not an outbox row",
            Some(SECRET),
            {
                let mut bad = good[1].json();
                bad["after"] = json!({ "name": "not an event" });
                serde_json::to_vec(&json!({ "payload": [good[0].json(), bad], "length": 2 }))
                    .unwrap()
            },
            400,
        ),
        (
            "a bad resolved timestamp",
            Some(SECRET),
            serde_json::to_vec(&json!({ "resolved": "yesterday" })).unwrap(),
            400,
        ),
    ];
    for (what, auth, body, status) in cases {
        let error = receiver.receive(auth, &body).await.unwrap_err();
        assert_eq!(error.status(), status, "{what}: {error}");
        if status == 400 {
            assert!(
                matches!(&error, ChangefeedError::Malformed(reason) if !reason.is_empty()),
                "{what}: {error}"
            );
        }
    }
    assert_eq!(published.load(Ordering::SeqCst), 0, "nothing was forwarded");

    // After the refusals, the good batch goes through whole.
    let received = receiver.receive(Some(SECRET), &body).await.unwrap();
    assert_eq!(received.forwarded, 3);
}

#[tokio::test]
async fn a_poison_event_is_a_dead_letter_and_the_feed_goes_on() {
    let (sink, published) = counting();
    let receiver = Receiver::new(sink, ReceiverConfig::default());
    let rows = rows(4, 2);
    let mut body: Value = serde_json::from_slice(&batch(&rows)).unwrap();
    body["payload"][1]["after"]["event_type"] = json!("Poison");
    let received = receiver
        .receive(None, &serde_json::to_vec(&body).unwrap())
        .await
        .unwrap();
    assert_eq!((received.forwarded, received.dead), (3, 1));
    assert_eq!(published.load(Ordering::SeqCst), 4);
    // Sent again (a replay), the dead letter is not retried either.
    let again = receiver
        .receive(None, &serde_json::to_vec(&body).unwrap())
        .await
        .unwrap();
    assert_eq!((again.forwarded, again.replays), (0, 4));
}

/// On CockroachDB (a PostgreSQL whose `version()` answers as CockroachDB does: CockroachDB
/// itself cannot be installed here), the polling relay stops before its first claim with a
/// sentence that points at the changefeed, publishing nothing of the events waiting; and
/// `migrate` takes CockroachDB's DDL — which PostgreSQL then refuses at its hash-sharded key,
/// the proof that the branch was taken.
#[tokio::test]
async fn the_polling_relay_refuses_cockroachdb_at_start_and_migrate_takes_its_ddl() {
    use outbox::{Outbox, TableName};
    let table = format!("cf_crdb_{}", uuid::Uuid::now_v7().simple());
    let outbox = Outbox::for_table(TableName::new(table.clone()).unwrap());
    let postgres = sqlx::PgPool::connect(&outbox_tests::postgres_url())
        .await
        .unwrap();
    outbox.migrate(&postgres).await.unwrap();
    let mut tx = postgres.begin().await.unwrap();
    for n in 0..5 {
        outbox
            .record(
                &mut *tx,
                &outbox::Event::new("account", "Numbered", Some("a"), &json!({ "n": n })).unwrap(),
            )
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let lookalike = sqlx::PgPool::connect(&outbox_tests::cockroach_lookalike_url().await)
        .await
        .unwrap();
    let version = outbox::store::postgres::cockroach_version(&lookalike)
        .await
        .unwrap()
        .expect("the lookalike answers as CockroachDB");
    assert_eq!(version.to_string(), "v24.1");
    assert_eq!(
        outbox::store::postgres::cockroach_version(&postgres)
            .await
            .unwrap(),
        None
    );
    let refusal = outbox::store::postgres::check_relay_support(&lookalike, outbox.table())
        .await
        .unwrap_err();
    assert!(
        refusal.to_string().starts_with(
            "the polling relay is not available on CockroachDB: publish with a changefeed"
        ),
        "{refusal}"
    );

    let published = Arc::new(AtomicUsize::new(0));
    let counted = published.clone();
    let sink = HandlerSink::new(move |_message: Message| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let relay = outbox::relay::Relay::builder(lookalike.clone(), sink)
        .outbox(&outbox)
        .poll_interval(Duration::from_millis(10))
        .build();
    tokio::time::timeout(Duration::from_secs(10), relay.run(std::future::pending()))
        .await
        .expect("the relay stops by itself on CockroachDB");
    assert_eq!(published.load(Ordering::SeqCst), 0);

    let other = Outbox::for_table(TableName::new(format!("{table}_2")).unwrap());
    let error = other.migrate(&lookalike).await.unwrap_err().to_string();
    assert!(error.contains("HASH"), "{error}");

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&postgres)
        .await
        .unwrap();
}

/// `outbox_changefeed_events_total` counts every row the sink confirmed, also in a request
/// that fails afterwards (it counted 300 of 301 when the last row failed: the count was added
/// only when the whole request succeeded); and the receiver's health (`outbox changefeed`'s
/// `/health`) reports the failing sink until a request goes through (it answered ok whatever
/// the sink did).
#[tokio::test]
async fn rows_forwarded_before_a_failure_are_counted_and_health_reports_the_sink() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("no other recorder in this test process");
    let sink = HandlerSink::new(|message: Message| async move {
        if message.aggregate_id == "a2" {
            Err(SinkError::transient("the broker is away"))
        } else {
            Ok(())
        }
    });
    let receiver = Receiver::new(sink, ReceiverConfig::default());
    assert_eq!(receiver.health(), Ok(()));
    let error = receiver
        .receive(None, &batch(&rows(3, 3)))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ChangefeedError::SinkFailed { .. }),
        "{error}"
    );
    let counted: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "outbox_changefeed_events_total")
        .map(|(.., value)| match value {
            DebugValue::Counter(count) => count,
            _ => 0,
        })
        .sum();
    assert_eq!(counted, 2, "the two rows the sink confirmed");
    // The health check says so until a request goes through.
    let reason = receiver.health().unwrap_err();
    assert!(reason.contains("the broker is away"), "{reason}");
    let fine = rows(2, 2);
    receiver.receive(None, &batch(&fine)).await.unwrap();
    assert_eq!(receiver.health(), Ok(()));
}
