//! The CockroachDB changefeed receiver, driven by a client that behaves as CockroachDB's
//! webhook sink does (CockroachDB itself cannot be installed here). Each behaviour comes from
//! CockroachDB's own documents and source:
//!
//! * ordering per key only, every outbox row its own key, so an aggregate's rows arrive in any
//!   order, in batches sent in parallel (`changefeed-messages.md`, "Ordering and delivery
//!   guarantees"; `batching_sink.go`, which flushes a batch when it holds `Flush.Messages` rows
//!   or `Flush.Bytes` bytes, the row that crossed the threshold included);
//! * the `wrapped` envelope `{"payload": [...], "length": n}` and the resolved message
//!   `{"resolved": "<ts>"}`, sent once the rows before it were flushed, and promising no row
//!   with a lower timestamp (`changefeed-messages.md`, "Resolved messages"; `sink_webhook_v2.go`);
//! * bodies built by Go's `json.Marshal`, which writes `<`, `>` and `&` as `\u003c`, `\u003e`,
//!   `\u0026` (Go's `encoding/json` documentation, "HTMLEscape"), while `Flush.Bytes` counts the
//!   rows before that;
//! * any answer but a 2xx retried, for ever with `Retry.Max = "inf"`; duplicates after a retry
//!   or a restart from an older checkpoint (`changefeed-messages.md`, "Duplicate messages");
//! * a client timeout of 3 s (`webhook_client_timeout`'s default, `create-changefeed.md`).
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outbox::Dialect;
use outbox::changefeed::{ChangefeedError, Hlc, Receiver, ReceiverConfig, Setup};
use outbox::relay::{HandlerSink, Message, Relay};
use outbox::sinks::{self, Routing};
use outbox::{Outbox, TableName};
use outbox_tests::{Lite, My, Pg, Proxy, TestDb, eventually};
use serde_json::{Value, json};

const SECRET: &str = "Bearer changefeed-test-secret";

/// One committed outbox row as a changefeed carries it.
#[derive(Clone, Debug)]
struct Row {
    id: uuid::Uuid,
    seq: i64,
    aggregate: String,
    updated: Hlc,
    /// `{"n": <the aggregate's event number: its commit order>, …}`.
    payload: Value,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "after": {
                "id": self.id.to_string(),
                "seq": self.seq,
                "aggregate_type": "account",
                "aggregate_id": self.aggregate,
                "event_type": "Numbered",
                "payload": self.payload,
                "headers": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
                "created_at": "2026-12-04T10:00:00.000000Z",
            },
            "key": [self.id.to_string()],
            "topic": "outbox",
            "updated": self.updated.to_string(),
        })
    }
}

/// The commit timestamp of transaction `tx`.
fn at(tx: i64) -> Hlc {
    Hlc {
        wall: 1_733_300_000_000_000_000 + i128::from(tx) * 1_000,
        logical: 0,
    }
}

/// `transactions` transactions of two events each, over `aggregates` aggregates: the rows a
/// service commits, in commit order. Both events of a transaction share its timestamp; `seq`
/// orders them. Payloads hold `<`, `>` and `&`, which Go escapes.
fn history(transactions: i64, aggregates: i64) -> Vec<Row> {
    let mut next: HashMap<String, i64> = HashMap::new();
    let mut rows = Vec::new();
    for tx in 0..transactions {
        for k in 0..2 {
            let seq = tx * 2 + k;
            // Aggregates interleave: a transaction may touch the same one twice.
            let aggregate = format!("a{}", (seq * 7 / 3) % aggregates);
            let n = next.entry(aggregate.clone()).or_default();
            rows.push(Row {
                id: uuid::Uuid::now_v7(),
                seq,
                aggregate,
                updated: at(tx),
                payload: json!({ "n": *n, "note": "<b>Tom & Jerry</b>" }),
            });
            *n += 1;
        }
    }
    rows
}

/// CockroachDB's webhook sink, as its documents and source describe it.
struct Cockroach {
    receiver: Arc<dyn Endpoint>,
    /// `Flush.Messages` and `Flush.Bytes`.
    messages: usize,
    bytes: usize,
    /// The slowest answer, to compare with the 3 s client timeout.
    slowest: std::sync::Mutex<Duration>,
}

/// What the client posts to: the library's receiver, whatever its database.
trait Endpoint: Send + Sync {
    fn post<'a>(
        &'a self,
        body: &'a [u8],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), ChangefeedError>> + Send + 'a>>;
}

impl<DB: Dialect> Endpoint for Receiver<DB> {
    fn post<'a>(
        &'a self,
        body: &'a [u8],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), ChangefeedError>> + Send + 'a>> {
        Box::pin(async move { self.receive(Some(SECRET), body).await.map(|_| ()) })
    }
}

/// A value as Go's `json.Marshal` writes it: `<`, `>` and `&` escaped (only ever found inside
/// strings, so the replacement keeps the JSON valid).
fn go_json(value: &Value) -> Vec<u8> {
    serde_json::to_string(value)
        .unwrap()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .into_bytes()
}

/// The `Flush.Messages` and `Flush.Bytes` of the statements `setup` generates.
fn flush_settings(setup: &Setup) -> (usize, usize) {
    let create = setup.statements().pop().unwrap();
    let config = create
        .split("webhook_sink_config = '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap();
    let config: Value = serde_json::from_str(config).unwrap();
    (
        config["Flush"]["Messages"].as_u64().unwrap() as usize,
        config["Flush"]["Bytes"].as_u64().unwrap() as usize,
    )
}

impl Cockroach {
    fn new(receiver: Arc<dyn Endpoint>, setup: &Setup) -> Cockroach {
        let (messages, bytes) = flush_settings(setup);
        Cockroach {
            receiver,
            messages,
            bytes,
            slowest: std::sync::Mutex::new(Duration::ZERO),
        }
    }

    /// The bodies for `rows`, in the order given, cut where `batching_sink.go` flushes: at
    /// `Flush.Messages` rows, or once the rows' unescaped bytes reach `Flush.Bytes`.
    fn batches(&self, rows: &[Row]) -> Vec<Vec<u8>> {
        let mut bodies = Vec::new();
        let (mut batch, mut size) = (Vec::new(), 0);
        for row in rows {
            let value = row.json();
            size += serde_json::to_vec(&value).unwrap().len();
            batch.push(value);
            if batch.len() >= self.messages || size >= self.bytes {
                bodies.push(Self::body(std::mem::take(&mut batch)));
                size = 0;
            }
        }
        if !batch.is_empty() {
            bodies.push(Self::body(batch));
        }
        bodies
    }

    fn body(rows: Vec<Value>) -> Vec<u8> {
        let length = rows.len();
        go_json(&json!({ "payload": rows, "length": length }))
    }

    /// Posts one body until it is answered 2xx (`Retry.Max = "inf"`).
    async fn post(&self, body: &[u8]) {
        loop {
            let started = Instant::now();
            let answer = self.receiver.post(body).await;
            let took = started.elapsed();
            {
                let mut slowest = self.slowest.lock().unwrap();
                *slowest = (*slowest).max(took);
            }
            match answer {
                Ok(()) => return,
                Err(error) => {
                    assert_eq!(
                        error.status(),
                        503,
                        "only a failure to store is retried: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Sends `rows` shuffled (per-key order only), four requests at a time, each until 2xx.
    async fn send(&self, rows: &[Row], shuffle: u64) {
        let mut rows = rows.to_vec();
        shuffled(&mut rows, shuffle);
        let bodies = self.batches(&rows);
        for wave in bodies.chunks(4) {
            futures::future::join_all(wave.iter().map(|body| self.post(body))).await;
        }
    }

    /// The resolved message, sent once everything before it was answered.
    async fn resolve(&self, resolved: Hlc) {
        self.post(&go_json(&json!({ "resolved": resolved.to_string() })))
            .await;
    }
}

/// A deterministic shuffle (a linear congruential generator: no dependency for it).
fn shuffled<T>(items: &mut [T], seed: u64) {
    let step = |state: u64| {
        state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407)
    };
    let mut state = step(seed);
    for i in (1..items.len()).rev() {
        state = step(state);
        let j = (state >> 33) as usize % (i + 1);
        items.swap(i, j);
    }
}

/// The published events are the committed ones, each once, and each aggregate's are its
/// `n = 0, 1, 2, …` in that order.
fn assert_each_once_in_commit_order(published: &[(uuid::Uuid, String, i64)], committed: &[Row]) {
    let ids: HashSet<uuid::Uuid> = published.iter().map(|(id, ..)| *id).collect();
    assert_eq!(ids.len(), published.len(), "an event was published twice");
    assert_eq!(
        ids,
        committed.iter().map(|row| row.id).collect(),
        "the published events are not the committed ones"
    );
    let mut by_aggregate: HashMap<&str, Vec<i64>> = HashMap::new();
    for (_, aggregate, n) in published {
        by_aggregate.entry(aggregate).or_default().push(*n);
    }
    for (aggregate, ns) in by_aggregate {
        let expected: Vec<i64> = (0..ns.len() as i64).collect();
        assert_eq!(ns, expected, "aggregate {aggregate} out of commit order");
    }
}

/// How many messages `stream` holds.
async fn held(stream: &async_nats::jetstream::stream::Stream) -> u64 {
    stream.clone().info().await.unwrap().state.messages
}

/// Waits up to a minute until `stream` holds `count` messages.
async fn wait_for(stream: &async_nats::jetstream::stream::Stream, count: u64) {
    eventually(
        Duration::from_secs(60),
        &format!("{count} events on the stream"),
        || async move { held(stream).await >= count },
    )
    .await;
}

fn nats_url() -> String {
    std::env::var("OUTBOX_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The whole feed through the receiver's default store (SQLite) and the relay to NATS
/// JetStream behind a proxy, read back with NATS's own client: parallel batches in arbitrary
/// key order, rows at exactly the resolved timestamp sent after it, a retried request, a sink
/// outage during which every request is still answered 200 within CockroachDB's 3 s, and a
/// restart from an older checkpoint that sends 140 rows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changefeed_is_published_once_in_commit_order_through_an_outage_and_a_rewind() {
    let prefix = format!("changefeed_{}", uuid::Uuid::now_v7().simple());
    let direct = async_nats::connect(nats_url())
        .await
        .unwrap_or_else(|e| panic!("NATS: {e}; start it with scripts/services.sh"));
    let jetstream = async_nats::jetstream::new(direct);
    let mut stream = jetstream
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

    let store = Lite::connect().await;
    let receiver = Arc::new(
        Receiver::open(
            store.pool().clone(),
            Outbox::DEFAULT,
            ReceiverConfig::default().secret(SECRET),
        )
        .await
        .unwrap(),
    );
    let relay = Relay::builder(store.pool().clone(), sink)
        .outbox(receiver.outbox())
        .poll_interval(Duration::from_millis(10))
        .build();
    let (stop, relay) = outbox_tests::spawn(relay);
    let setup = Setup::new(TableName::DEFAULT, "https://receiver:8443/").unwrap();
    let mut cockroach = Cockroach::new(receiver.clone(), &setup);
    // Flush.Messages as a changefeed created with 7 has it: many parallel requests.
    cockroach.messages = 7;
    let rows = history(100, 8);

    // Transactions 0..=50, shuffled: nothing is published before a resolved timestamp.
    cockroach.send(&rows[..102], 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        held(&stream).await,
        0,
        "published before a resolved timestamp covered it"
    );
    // Resolved at transaction 50's timestamp: 0..50 go out; 50's own rows wait, since rows at
    // exactly a resolved timestamp may still come.
    cockroach.resolve(at(50)).await;
    wait_for(&stream, 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        held(&stream).await,
        100,
        "released at the resolved timestamp"
    );

    // The broker goes away; the changefeed goes on, one request sent twice (its answer lost).
    proxy.cut();
    cockroach.send(&rows[102..], 2).await;
    let retried = cockroach.batches(&rows[150..157]);
    cockroach.post(&retried[0]).await;
    cockroach.resolve(at(100)).await;
    // A restart from an older checkpoint: transactions 30.. again, then resolved again.
    cockroach.send(&rows[60..], 3).await;
    cockroach.resolve(at(101)).await;
    let slowest = *cockroach.slowest.lock().unwrap();
    assert!(
        slowest < Duration::from_secs(3),
        "an answer took {slowest:?}, over CockroachDB's 3 s client timeout"
    );
    assert!(receiver.health().is_ok(), "the receiver's database is fine");
    proxy.restore();

    wait_for(&stream, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    relay.await.unwrap();

    // What the stream holds, read with NATS's own client.
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("check".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let total = stream.info().await.unwrap().state.messages as usize;
    let mut messages = consumer
        .fetch()
        .max_messages(total)
        .messages()
        .await
        .unwrap();
    let mut published = Vec::new();
    use futures::StreamExt;
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let headers = message.headers.clone().unwrap();
        let id: uuid::Uuid = headers
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let row = rows.iter().find(|row| row.id == id).unwrap();
        let text = std::str::from_utf8(&message.payload).unwrap();
        assert!(
            text.contains("<b>Tom & Jerry</b>"),
            "the payload arrives as written, not as Go escaped it: {text}"
        );
        let payload: Value = serde_json::from_str(text).unwrap();
        assert_eq!(payload, row.payload);
        published.push((id, row.aggregate.clone(), payload["n"].as_i64().unwrap()));
    }
    assert_each_once_in_commit_order(&published, &rows);
    jetstream
        .delete_stream(prefix.to_uppercase())
        .await
        .unwrap();
}

/// The receiver on PostgreSQL and on MariaDB (its staging table and its moves, in each
/// dialect's SQL): rows in arbitrary order and replayed, published once each in commit order.
async fn on_a_shared_database<D: TestDb>() {
    let db = D::connect().await;
    let table = TableName::new(format!("cf_{}", uuid::Uuid::now_v7().simple())).unwrap();
    let outbox = Outbox::for_table(table.clone());
    let receiver = Arc::new(
        Receiver::open(
            db.pool().clone(),
            outbox,
            ReceiverConfig::default().secret(SECRET),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", D::NAME)),
    );
    let published = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = published.clone();
    let sink = HandlerSink::new(move |message: Message| {
        let n = outbox_tests::n(&message);
        seen.lock()
            .unwrap()
            .push((message.id, message.aggregate_id.clone(), n));
        async { Ok(()) }
    });
    let relay = Relay::builder(db.pool().clone(), sink)
        .outbox(receiver.outbox())
        .poll_interval(Duration::from_millis(10))
        .build();
    let (stop, relay) = outbox_tests::spawn(relay);
    let setup = Setup::new(table.clone(), "https://receiver:8443/").unwrap();
    let mut cockroach = Cockroach::new(receiver.clone(), &setup);
    cockroach.messages = 5;
    let rows = history(40, 3);
    cockroach.send(&rows, 4).await;
    cockroach.send(&rows[20..], 5).await;
    cockroach.resolve(at(40)).await;
    eventually(Duration::from_secs(20), "80 events published", || {
        let count = published.lock().unwrap().len();
        async move { count >= 80 }
    })
    .await;
    // A replay after the release: dropped by id, and counted as such.
    let again = receiver
        .receive(Some(SECRET), &plain(&rows[..4]))
        .await
        .unwrap();
    assert_eq!((again.staged, again.replays), (0, 4), "{}", D::NAME);
    cockroach.send(&rows[..10], 6).await;
    cockroach.resolve(at(41)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(());
    relay.await.unwrap();
    assert_each_once_in_commit_order(&published.lock().unwrap(), &rows);
    for suffix in ["", "_changefeed", "_lease", "_handling"] {
        let name = format!("{}{suffix}", table.parts().1);
        db.execute(format!("DROP TABLE IF EXISTS {name}")).await;
    }
}

#[tokio::test]
async fn the_receiver_keeps_its_rows_in_postgresql() {
    on_a_shared_database::<Pg>().await;
}

#[tokio::test]
async fn the_receiver_keeps_its_rows_in_mariadb() {
    on_a_shared_database::<My>().await;
}

/// The settings `changefeed-sql` generates never make a request the receiver refuses as too
/// large: the worst case is rows just under `Flush.Bytes`, then the largest payload the outbox
/// accepts (8 MiB), all of `<`, `>` and `&`, which Go writes six bytes each. (The settings
/// before, `Flush.Bytes` half of a 16 MiB cap, made such requests 413 for ever.)
#[tokio::test]
async fn no_request_the_generated_settings_allow_is_too_large() {
    let store = Lite::connect().await;
    let receiver = Arc::new(
        Receiver::open(
            store.pool().clone(),
            Outbox::DEFAULT,
            ReceiverConfig::default().secret(SECRET),
        )
        .await
        .unwrap(),
    );
    let setup = Setup::new(TableName::DEFAULT, "https://receiver:8443/").unwrap();
    let cockroach = Cockroach::new(receiver.clone(), &setup);
    let nasty = |n: usize, bytes: usize| {
        let filler = "<&>".repeat(bytes / 3);
        // `{"n":…,"s":"…"}` of `bytes` bytes at most.
        let payload = json!({ "n": n, "s": &filler[..bytes - 32] });
        Row {
            id: uuid::Uuid::now_v7(),
            seq: n as i64,
            aggregate: "a".into(),
            updated: at(n as i64),
            payload,
        }
    };
    // Rows up to just under Flush.Bytes, then one with the largest payload.
    let mut rows = Vec::new();
    let mut size = 0;
    while size + 70_000 < cockroach.bytes {
        let row = nasty(rows.len(), 64 * 1024);
        size += serde_json::to_vec(&row.json()).unwrap().len();
        rows.push(row);
    }
    rows.push(nasty(rows.len(), Outbox::DEFAULT_MAX_PAYLOAD_BYTES));
    let bodies = cockroach.batches(&rows);
    assert_eq!(
        bodies.len(),
        1,
        "one request: the last row crossed Flush.Bytes"
    );
    let body = &bodies[0];
    let unescaped: usize = rows
        .iter()
        .map(|row| serde_json::to_vec(&row.json()).unwrap().len())
        .sum();
    assert!(
        body.len() > 5 * unescaped,
        "escaping made {unescaped} bytes {}",
        body.len()
    );
    assert!(
        body.len() <= ReceiverConfig::default().max_body_bytes,
        "a {}-byte request, over the cap",
        body.len()
    );
    let received = receiver.receive(Some(SECRET), body).await.unwrap();
    assert_eq!(received.staged, rows.len());
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

/// A sink counting what it was given.
fn counting() -> (impl outbox::relay::Sink, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let sink = HandlerSink::new(move |_message: Message| {
        seen.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    });
    (sink, count)
}

/// The rows the receiver's database holds, staged or released.
async fn staged(pool: &sqlx::SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox_changefeed")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn plain(rows: &[Row]) -> Vec<u8> {
    let payload: Vec<Value> = rows.iter().map(Row::json).collect();
    serde_json::to_vec(&json!({ "payload": payload, "length": rows.len() })).unwrap()
}

#[tokio::test]
async fn changefeed_refusals_say_why_and_store_nothing() {
    let store = Lite::connect().await;
    let receiver = Receiver::open(
        store.pool().clone(),
        Outbox::DEFAULT,
        ReceiverConfig::default()
            .secret(SECRET)
            .max_body_bytes(4_096),
    )
    .await
    .unwrap();
    let good = history(2, 1);
    let body = plain(&good[..3]);

    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        ("no secret", None, body.clone(), 401),
        ("a wrong secret", Some("Bearer nope"), body.clone(), 401),
        (
            "a body over the cap",
            Some(SECRET),
            plain(&history(20, 1)),
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
    assert_eq!(staged(store.pool()).await, 0, "nothing was stored");

    // After the refusals, the good batch is stored whole; a delete is skipped.
    let mut rows: Vec<Value> = good[..3].iter().map(Row::json).collect();
    let mut delete = good[3].json();
    delete["after"] = Value::Null;
    rows.push(delete);
    let body = serde_json::to_vec(&json!({ "payload": rows, "length": 4 })).unwrap();
    let received = receiver.receive(Some(SECRET), &body).await.unwrap();
    assert_eq!((received.staged, received.deletes), (3, 1));
    assert_eq!(staged(store.pool()).await, 3);
}

/// `outbox_changefeed_events_total` counts the rows stored; the answer stays bounded when the
/// receiver's database does not answer (held by another writer), as a 503 that CockroachDB
/// retries, and `/health` (`Receiver::health`) says why until the database answers again.
#[tokio::test]
async fn a_database_that_does_not_answer_is_a_bounded_503_and_health_says_why() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("no other recorder in this test process");
    let store = Lite::connect().await;
    let receiver = Receiver::open(
        store.pool().clone(),
        Outbox::DEFAULT,
        ReceiverConfig::default().answer_within(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let rows = history(3, 2);
    receiver.receive(None, &plain(&rows[..4])).await.unwrap();
    // A snapshot takes the counts since the one before.
    let counted = || {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == "outbox_changefeed_events_total")
            .map(|(.., value)| match value {
                DebugValue::Counter(count) => count,
                _ => 0,
            })
            .sum::<u64>()
    };
    assert_eq!(counted(), 4);
    assert_eq!(receiver.health(), Ok(()));

    // Another writer holds the database.
    let mut writer = store.pool().acquire().await.unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut *writer)
        .await
        .unwrap();
    let started = Instant::now();
    let error = receiver
        .receive(None, &plain(&rows[4..]))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(error.status(), 503, "{error}");
    assert!(
        error.to_string().contains("did not answer within 300ms"),
        "{error}"
    );
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let reason = receiver.health().unwrap_err();
    assert!(reason.contains("did not answer"), "{reason}");
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *writer)
        .await
        .unwrap();
    drop(writer);

    // CockroachDB sends it again: stored, counted, healthy.
    let received = receiver.receive(None, &plain(&rows[4..])).await.unwrap();
    assert_eq!(received.staged, 2);
    assert_eq!(
        counted(),
        2,
        "the 2 rows stored since, not the refused request's"
    );
    assert_eq!(receiver.health(), Ok(()));
    let (sink, published) = counting();
    let relay = Relay::builder(store.pool().clone(), sink)
        .outbox(receiver.outbox())
        .poll_interval(Duration::from_millis(10))
        .build();
    let (stop, relay) = outbox_tests::spawn(relay);
    receiver
        .receive(None, &go_json(&json!({ "resolved": at(3).to_string() })))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "6 events published", || async {
        published.load(Ordering::SeqCst) == 6
    })
    .await;
    assert_eq!(receiver.released(), Some(at(3)));
    let _ = stop.send(());
    relay.await.unwrap();
}
