//! The relay's guarantees against the real databases: committed ⇒ published, rolled back ⇒
//! never, per-aggregate order across racing relays, crashes, lost connections, failing sinks,
//! poison events, retention. Each generic test runs once per dialect (PostgreSQL, MariaDB/MySQL,
//! SQLite; see `relay_tests!` at the end); waking on `NOTIFY` and the metrics are tested on
//! PostgreSQL, the dialect-independent part of the relay being the same. Every test is bounded
//! in time.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use outbox::Event;
use outbox::relay::{
    Backoff, ChannelSink, DeadLetterFilter, HandlerSink, Message, Relay, RelayBuilder, Sink,
    SinkError,
};
use outbox_tests::{Lite, My, Pg, Poison, RelayTable, TestDb, eventually, n, spawn};

const LIMIT: Duration = Duration::from_secs(60);

fn fast_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(100))
}

/// A relay of `table` into `sink`. On SQLite, where relays take turns under a lease, a crashed
/// relay holds up its successor for 1 s instead of 10.
fn relay<D: TestDb, K: Sink>(
    table: &RelayTable<D>,
    pool: sqlx::Pool<D::Database>,
    sink: K,
) -> RelayBuilder<sqlx::Pool<D::Database>, K> {
    Relay::builder(pool, sink)
        .outbox(&table.outbox)
        .lease_ttl(Duration::from_secs(1))
}

async fn committed_events_are_published_and_rolled_back_events_never_are<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    let (sink, mut received) = ChannelSink::new(10_000);
    let (stop, relay) = spawn(relay(&table, table.pool.clone(), sink).build());

    // 8 writers, 2,000 transactions, a random third rolled back, while the relay runs.
    let writers = (0..8).map(|w| {
        let (pool, outbox) = (table.pool.clone(), table.outbox.clone());
        tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..250 {
                let n = w * 1000 + i;
                let mut tx = pool.begin().await.unwrap();
                let payload = serde_json::json!({ "n": n });
                let event = Event::new(
                    "test",
                    "Numbered",
                    Some(format!("agg-{}", n % 50)),
                    &payload,
                )
                .unwrap();
                outbox.record(&mut *tx, &event).await.unwrap();
                if fastrand::u8(..3) == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.push(n);
                }
            }
            committed
        })
    });
    let mut committed = HashSet::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }

    let mut seen = HashSet::new();
    while seen.len() < committed.len() {
        let message = tokio::time::timeout(LIMIT, received.recv())
            .await
            .expect("events stopped arriving")
            .unwrap();
        let n = n(&message);
        assert!(
            committed.contains(&n),
            "event {n} was rolled back but published"
        );
        seen.insert(n);
    }
    // Nothing else arrives: no rolled-back event, no leftover.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(message) = received.try_recv() {
        assert!(
            committed.contains(&n(&message)),
            "event {} was rolled back but published",
            n(&message)
        );
    }
    assert_eq!(seen, committed);
    stop.send(()).unwrap();
    relay.await.unwrap(); // settles the batch in hand
    assert_eq!(table.remaining().await, 0, "published events are deleted");
    table.drop_table().await;
}

async fn four_racing_relays_keep_per_aggregate_order<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    table.preload(20_000, 200).await;
    let log: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let relays: Vec<_> = (0..4)
        .map(|_| {
            let log = log.clone();
            let sink = HandlerSink::new(move |message: Message| {
                let log = log.clone();
                async move {
                    if fastrand::u8(..50) == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await; // let the relays interleave
                    }
                    log.lock()
                        .unwrap()
                        .push((message.aggregate_id.clone(), n(&message)));
                    Ok(())
                }
            });
            spawn(
                relay(&table, table.pool.clone(), sink)
                    .batch_size(1_000)
                    .build(),
            )
        })
        .collect();

    // Bounded generously: with four relays sharing two cores (and the rest of the suite),
    // claims over 20,000 rows of 200 hot aggregates take tens of seconds.
    eventually(Duration::from_secs(180), "20,000 events", || async {
        log.lock().unwrap().len() >= 20_000
    })
    .await;
    for (stop, relay) in relays {
        stop.send(()).unwrap();
        relay.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let mut per_aggregate: HashMap<&str, Vec<i64>> = HashMap::new();
    for (aggregate, n) in log.iter() {
        per_aggregate.entry(aggregate).or_default().push(*n);
    }
    assert_eq!(per_aggregate.len(), 200);
    for (aggregate, ns) in &per_aggregate {
        let expected: Vec<i64> = {
            let a: i64 = aggregate.trim_start_matches("agg-").parse().unwrap();
            (0..20_000).filter(|i| i % 200 == a).collect()
        };
        assert_eq!(
            ns, &expected,
            "aggregate {aggregate} was reordered or lost events"
        );
    }
    assert_eq!(table.remaining().await, 0);
    table.drop_table().await;
}

async fn relay_aborted_mid_batch_loses_nothing_and_duplicates_at_most_its_batches<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    table.preload(5_000, 100).await;
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let sink = || {
        let deliveries = deliveries.clone();
        HandlerSink::new(move |message: Message| {
            let deliveries = deliveries.clone();
            async move {
                tokio::time::sleep(Duration::from_micros(200)).await;
                deliveries.lock().unwrap().push(n(&message));
                Ok(())
            }
        })
    };
    let batch = 200;
    let mut aborts = 0;
    for _ in 0..8 {
        let aborted = relay(&table, table.pool.clone(), sink())
            .batch_size(batch)
            .build();
        let task = tokio::spawn(aborted.run(std::future::pending()));
        tokio::time::sleep(Duration::from_millis(20 + fastrand::u64(..60))).await;
        task.abort();
        let _ = task.await;
        aborts += 1;
    }
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink())
            .batch_size(batch)
            .build(),
    );
    eventually(LIMIT, "every event", || async {
        table.remaining().await == 0
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();

    let deliveries = deliveries.lock().unwrap().clone();
    let distinct: HashSet<i64> = deliveries.iter().copied().collect();
    assert_eq!(distinct.len(), 5_000, "every event was delivered");
    let duplicates = deliveries.len() - distinct.len();
    assert!(
        duplicates <= aborts * batch,
        "{duplicates} duplicates from {aborts} aborts of batches of {batch}"
    );
    table.drop_table().await;
}

/// A pool whose connections the test can cut from another connection, as a network failure or
/// a database restart would.
trait CutConnections: TestDb {
    /// A pool for the relay, its connections marked with `tag`.
    async fn tagged_pool(&self, tag: &str) -> sqlx::Pool<Self::Database>;
    /// Kills the connections marked with `tag`; returns how many. `None`: the database has no
    /// connections to cut (SQLite is a file).
    async fn cut(&self, tag: &str) -> Option<i64>;
}

impl CutConnections for Pg {
    async fn tagged_pool(&self, tag: &str) -> sqlx::PgPool {
        let options: sqlx::postgres::PgConnectOptions = self.url().parse().unwrap();
        sqlx::PgPool::connect_with(options.application_name(tag))
            .await
            .unwrap()
    }

    async fn cut(&self, tag: &str) -> Option<i64> {
        Some(self.scalar(format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{tag}'"
        )).await)
    }
}

impl CutConnections for My {
    /// MySQL connections carry no name sqlx can set: the relay logs in as a user of its own.
    async fn tagged_pool(&self, tag: &str) -> sqlx::MySqlPool {
        self.execute(format!(
            "CREATE USER IF NOT EXISTS '{tag}'@'%'; GRANT ALL ON *.* TO '{tag}'@'%'; \
             CREATE USER IF NOT EXISTS '{tag}'@'localhost'; GRANT ALL ON *.* TO '{tag}'@'localhost'"
        ))
        .await;
        let options: sqlx::mysql::MySqlConnectOptions = self.url().parse().unwrap();
        sqlx::MySqlPool::connect_with(options.username(tag))
            .await
            .unwrap()
    }

    async fn cut(&self, tag: &str) -> Option<i64> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE user = ?",
        )
        .bind(tag)
        .fetch_all(self.pool())
        .await
        .unwrap();
        for id in &ids {
            // A connection may end by itself meanwhile: ignore "unknown thread".
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
                .execute(self.pool())
                .await;
        }
        Some(i64::try_from(ids.len()).unwrap())
    }
}

impl CutConnections for Lite {
    async fn tagged_pool(&self, _tag: &str) -> sqlx::SqlitePool {
        self.pool().clone()
    }

    async fn cut(&self, _tag: &str) -> Option<i64> {
        None
    }
}

async fn relay_survives_cut_connections_and_a_failing_sink<D: CutConnections>() {
    let table = RelayTable::<D>::new().await;
    table.preload(3_000, 30).await;
    let failing = Arc::new(AtomicBool::new(true));
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let sink = {
        let (failing, delivered, failures) = (failing.clone(), delivered.clone(), failures.clone());
        HandlerSink::new(move |message: Message| {
            let (failing, delivered, failures) =
                (failing.clone(), delivered.clone(), failures.clone());
            async move {
                if failing.load(AtomicOrdering::SeqCst) {
                    failures.fetch_add(1, AtomicOrdering::SeqCst);
                    return Err(SinkError::transient("broker unavailable"));
                }
                delivered.lock().unwrap().insert(n(&message));
                Ok(())
            }
        })
    };
    // The relay's own pool, tagged so that only its connections are cut.
    let tag = format!("r{}", &table.name[table.name.len() - 10..]);
    let relay_pool = table.db.tagged_pool(&tag).await;
    let (stop, relay) = spawn(
        relay(&table, relay_pool, sink)
            .batch_size(100)
            .max_attempts(1_000)
            .backoff(fast_backoff())
            .build(),
    );

    // The sink fails for a while: events are retried, none delivered, none dead.
    eventually(LIMIT, "sink failures", || async {
        failures.load(AtomicOrdering::SeqCst) > 200
    })
    .await;
    assert!(delivered.lock().unwrap().is_empty());
    failing.store(false, AtomicOrdering::SeqCst);
    eventually(LIMIT, "catch-up to start", || async {
        delivered.lock().unwrap().len() > 200
    })
    .await;

    // Cut the relay's connections (a listener included) twice while it works: the second time
    // once it has connected again (after the first cut it backs off before reconnecting).
    for _ in 0..2 {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            match table.db.cut(&tag).await {
                None => break,
                Some(cut) if cut > 0 => break,
                Some(_) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no relay connection was found to cut"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(LIMIT, "every event after reconnecting", || async {
        table.remaining().await == 0
    })
    .await;
    assert_eq!(delivered.lock().unwrap().len(), 3_000);
    stop.send(()).unwrap();
    relay.await.unwrap();
    table.drop_table().await;
}

async fn poison_event_becomes_a_dead_letter_and_replays_once_fixed<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    table.preload(200, 20).await; // n = 0..200; aggregate agg-7 holds 7, 27, 47, ...
    let poison = 47;
    let failing = Poison::new(poison);
    let sink = failing.sink();
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .max_attempts(3)
            .backoff(fast_backoff())
            .build(),
    );
    eventually(LIMIT, "all but the poison event", || async {
        failing.delivered().len() == 199
    })
    .await;
    // Delivered before settled: the poison event's settlement may still be on its way.
    eventually(LIMIT, "the dead letter", || async {
        !table
            .outbox
            .dead_letters(&table.pool, 10)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let dead = table.outbox.dead_letters(&table.pool, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(n(&dead[0].message), poison);
    assert_eq!(dead[0].message.attempts, 3);
    assert_eq!(dead[0].last_error, format!("cannot route event {poison}"));
    {
        // The aggregate's earlier events came first; its later ones were held back until the
        // poison event was dead.
        let delivered = failing.delivered();
        let position = |n: i64| delivered.iter().position(|d| *d == n).unwrap();
        assert!(position(27) < position(67));
    }

    failing.fix();
    let replayed = table
        .outbox
        .replay_dead_letters(&table.pool, &[dead[0].message.id])
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    eventually(LIMIT, "the replayed event", || async {
        failing.delivered().contains(&poison)
    })
    .await;
    assert!(
        table
            .outbox
            .dead_letters(&table.pool, 10)
            .await
            .unwrap()
            .is_empty()
    );
    stop.send(()).unwrap();
    relay.await.unwrap(); // settles the batch in hand
    assert_eq!(table.remaining().await, 0);
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_wakes_on_commit_without_waiting_for_its_poll_interval() {
    let mut table = RelayTable::<Pg>::new().await;
    table.outbox = table.outbox.clone().notify_on_commit(true);
    table.outbox.migrate(&table.pool).await.unwrap(); // installs the NOTIFY trigger
    let (sink, mut received) = ChannelSink::new(16);
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .poll_interval(Duration::from_secs(3600))
            .build(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // the relay is now idle, listening
    for i in 0..3 {
        let mut tx = table.pool.begin().await.unwrap();
        let payload = serde_json::json!({ "n": i });
        let event = Event::new("test", "Numbered", Some("agg"), &payload).unwrap();
        table.outbox.record(&mut *tx, &event).await.unwrap();
        tx.commit().await.unwrap();
        let message = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("the relay did not wake on commit")
            .unwrap();
        assert_eq!(n(&message), i);
    }
    stop.send(()).unwrap();
    relay.await.unwrap();
    table.drop_table().await;
}

async fn retention_keeps_published_events_then_purges_them<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    table.preload(1_500, 10).await;
    let (sink, mut received) = ChannelSink::new(2_000);
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .retention(Duration::from_secs(2))
            .build(),
    );
    for _ in 0..1_500 {
        tokio::time::timeout(LIMIT, received.recv())
            .await
            .unwrap()
            .unwrap();
    }
    eventually(LIMIT, "every event marked published", || {
        table
            .count("published_at IS NOT NULL")
            .then(|n| async move { n == 1_500 })
    })
    .await;
    assert_eq!(table.remaining().await, 0, "nothing is pending");
    // Purged after the retention period, by the relay's housekeeping (every 2 s).
    eventually(LIMIT, "published events purged", || {
        table.count("1 = 1").then(|n| async move { n == 0 })
    })
    .await;
    assert!(
        received.try_recv().is_err(),
        "kept events are not published again"
    );
    stop.send(()).unwrap();
    relay.await.unwrap();
    table.drop_table().await;
}

async fn relay_process_killed_with_sigkill_loses_nothing<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    table.preload(4_000, 100).await;
    let deliveries = format!("{}_deliveries", table.name);
    table
        .db
        .execute(format!("CREATE TABLE {deliveries} (n BIGINT NOT NULL)"))
        .await;
    let batch = 200;
    let spawn_child = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_relay-child"))
            .arg(table.db.url())
            .arg(&table.name)
            .arg(batch.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let delivered = || {
        table
            .db
            .scalar(format!("SELECT count(*) FROM {deliveries}"))
    };
    // Kill relays with SIGKILL mid-run, each after it delivered something.
    let mut kills = 0;
    for _ in 0..4 {
        let before = delivered().await;
        let mut child = spawn_child();
        eventually(LIMIT, "the child relay to deliver", || {
            delivered().then(move |n| async move { n > before })
        })
        .await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(..50))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    let mut child = spawn_child();
    eventually(LIMIT, "every event", || async {
        table.remaining().await == 0
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    let query = |what: &str| table.db.scalar(format!("SELECT {what} FROM {deliveries}"));
    // Every n in 0..4,000 at least once, and nothing else.
    assert_eq!(
        query("count(DISTINCT n)").await,
        4_000,
        "every event was delivered"
    );
    assert_eq!((query("min(n)").await, query("max(n)").await), (0, 3_999));
    let duplicates = query("count(*)").await - 4_000;
    assert!(
        duplicates <= kills * batch as i64,
        "{duplicates} duplicates from {kills} kills of batches of {batch}"
    );
    table.db.execute(format!("DROP TABLE {deliveries}")).await;
    table.drop_table().await;
}

/// A poison event that kills the relay process every time, and one that hangs its sink, under a
/// supervisor that restarts the process whenever it exits (as systemd's `Restart=always`
/// does): each ends a dead letter after `max_attempts` (3) — the one that kills the relay with
/// a reason saying so — every other event is delivered, and the relay then stays up. Before,
/// the relay was killed by the same event after every restart, for ever, and every aggregate
/// waited; and the hung delivery held it for ever.
async fn a_poison_event_that_kills_the_relay_process_ends_a_dead_letter<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    table.preload(300, 10).await; // agg-k holds k, k+10, ...
    let (killer, hanger) = (137, 58); // agg-7 and agg-8
    let deliveries = format!("{}_deliveries", table.name);
    table
        .db
        .execute(format!("CREATE TABLE {deliveries} (n BIGINT NOT NULL)"))
        .await;
    let spawn_child = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_relay-child"))
            .arg(table.db.url())
            .arg(&table.name)
            .arg("50")
            .env("RELAY_CHILD_PANIC_ON", killer.to_string())
            .env("RELAY_CHILD_HANG_ON", hanger.to_string())
            .env("RELAY_CHILD_MAX_ATTEMPTS", "3")
            .env("RELAY_CHILD_DELIVERY_TIMEOUT_MS", "300")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // The supervisor: restarts the relay whenever it exits, until the two are dead letters.
    let mut child = spawn_child();
    let mut restarts = 0;
    let deadline = std::time::Instant::now() + LIMIT;
    while table.count("dead_at IS NOT NULL").await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the poison events never ended dead ({restarts} restarts)"
        );
        if child.try_wait().unwrap().is_some() {
            restarts += 1;
            assert!(restarts <= 10, "the relay keeps dying: {restarts} restarts");
            child = spawn_child();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(LIMIT, "every other event delivered", || async {
        table.remaining().await == 2
    })
    .await;
    // It stays up now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(child.try_wait().unwrap().is_none(), "the relay died again");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        (3..=4).contains(&restarts),
        "the killer killed the relay {restarts} times; max_attempts is 3"
    );
    let delivered = |what: &str| table.db.scalar(format!("SELECT {what} FROM {deliveries}"));
    assert_eq!(
        delivered("count(DISTINCT n)").await,
        298,
        "every other event"
    );
    let dead = table.outbox.dead_letters(&table.pool, 10).await.unwrap();
    let reason = |k: i64| {
        dead.iter()
            .find(|d| n(&d.message) == k)
            .map(|d| d.last_error.clone())
            .unwrap()
    };
    assert!(
        reason(killer).contains("the relay stopped 3 times while handling this event"),
        "{}",
        reason(killer)
    );
    assert!(
        reason(hanger).contains("the sink did not answer within 300ms"),
        "{}",
        reason(hanger)
    );
    table.db.execute(format!("DROP TABLE {deliveries}")).await;
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reports_published_failed_dead_batch_size_and_lag_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("no other recorder in this test process");

    let table = RelayTable::<Pg>::new().await;
    table.preload(100, 10).await;
    let sink = HandlerSink::new(|message: Message| async move {
        if n(&message) == 42 {
            return Err(SinkError::permanent("refused"));
        }
        Ok(())
    });
    let (stop, relay) = spawn(relay(&table, table.pool.clone(), sink).build());
    eventually(LIMIT, "all events settled", || async {
        table.remaining().await == 1
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();

    let mut seen = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        if key
            .labels()
            .any(|l| l.key() == "table" && l.value() == table.name)
        {
            seen.insert(key.name().to_owned(), value);
        }
    }
    let counter = |name: &str| match seen.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?} in {seen:?}"),
    };
    assert_eq!(counter("outbox_events_published_total"), 99);
    assert_eq!(counter("outbox_events_dead_total"), 1);
    assert_eq!(counter("outbox_events_failed_total"), 1);
    match seen.get("outbox_batch_size") {
        Some(DebugValue::Histogram(sizes)) => {
            assert!(!sizes.is_empty());
            // One batch claims all 100; 42 fails permanently in it, so the later events of its
            // aggregate (52, 62, 72, 82, 92) are released untouched and claimed once more.
            assert_eq!(sizes.iter().map(|s| s.into_inner()).sum::<f64>(), 105.0);
        }
        other => panic!("outbox_batch_size: {other:?}"),
    }
    assert!(
        matches!(seen.get("outbox_lag_seconds"), Some(DebugValue::Gauge(_))),
        "{seen:?}"
    );
    table.drop_table().await;
}

async fn unordered_relay_lets_later_events_pass_a_failing_one<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    table.preload(50, 5).await; // aggregate agg-0 holds 0, 5, 10, ..., 45
    let stuck = 5;
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let sink = {
        let delivered = delivered.clone();
        HandlerSink::new(move |message: Message| {
            let delivered = delivered.clone();
            async move {
                let n = n(&message);
                if n == stuck {
                    return Err(SinkError::transient("still failing"));
                }
                delivered.lock().unwrap().insert(n);
                Ok(())
            }
        })
    };
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .ordering(outbox::relay::Ordering::Unordered)
            .max_attempts(1_000)
            .backoff(fast_backoff())
            .build(),
    );
    // Every other event arrives, the later events of the failing one's aggregate included.
    eventually(LIMIT, "all but the failing event", || async {
        delivered.lock().unwrap().len() == 49
    })
    .await;
    assert!(
        (10..50)
            .step_by(5)
            .all(|n| delivered.lock().unwrap().contains(&n))
    );
    assert!(!delivered.lock().unwrap().contains(&stuck));
    stop.send(()).unwrap();
    relay.await.unwrap(); // settles the batch in hand
    assert_eq!(
        table.remaining().await,
        1,
        "the failing event is still pending, not dead"
    );
    table.drop_table().await;
}

/// Delayed events: none published before its time, each within a poll interval (and a margin
/// for a loaded machine) after it; they hold back nothing of their aggregate; `status` counts
/// them apart; a cancellation rolled back changes nothing, a committed one means never; an
/// outbox tailed from the log refuses them.
async fn delayed_events_wait_for_their_time_and_can_be_cancelled<D: TestDb>() {
    use std::time::{Instant, SystemTime};
    let table = RelayTable::<D>::new().await;
    let delay = Duration::from_secs(3);
    let event = |n: i64, aggregate: &str| {
        Event::new(
            "test",
            "Numbered",
            Some(aggregate),
            &serde_json::json!({ "n": n }),
        )
        .unwrap()
    };
    let start = Instant::now();
    let mut tx = table.pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for event in [
        event(0, "agg-0").deliver_after(delay), // before 1 in its aggregate, yet 1 goes first
        event(1, "agg-0"),
        event(2, "agg-1").deliver_at(SystemTime::now() + delay),
        event(3, "agg-1").deliver_after(delay), // cancelled, rolled back: published
        event(4, "agg-2").deliver_after(delay), // cancelled for good
        event(5, "agg-2").deliver_at(SystemTime::UNIX_EPOCH), // long past: at once
    ] {
        ids.push(table.outbox.record(&mut *tx, &event).await.unwrap());
    }
    tx.commit().await.unwrap();
    let committed = Instant::now();

    let status = table.outbox.status(&table.pool).await.unwrap();
    let sum = |f: fn(&outbox::admin::EventCounts) -> u64| status.iter().map(f).sum::<u64>();
    assert_eq!(
        (sum(|c| c.pending), sum(|c| c.delayed)),
        (2, 4),
        "{status:?}"
    );
    let next_due = status.iter().find_map(|c| c.next_due).unwrap();
    assert!(next_due <= delay, "{next_due:?}");

    let mut tx = table.pool.begin().await.unwrap();
    assert!(table.outbox.cancel(&mut *tx, ids[3]).await.unwrap());
    tx.rollback().await.unwrap();
    let mut tx = table.pool.begin().await.unwrap();
    assert!(table.outbox.cancel(&mut *tx, ids[4]).await.unwrap());
    tx.commit().await.unwrap();
    let mut tx = table.pool.begin().await.unwrap();
    assert!(
        !table.outbox.cancel(&mut *tx, ids[4]).await.unwrap(),
        "gone already"
    );
    assert!(
        !table.outbox.cancel(&mut *tx, ids[1]).await.unwrap(),
        "not a delayed event"
    );
    tx.commit().await.unwrap();

    let arrivals = Arc::new(Mutex::new(Vec::<(i64, Instant)>::new()));
    let sink = {
        let arrivals = arrivals.clone();
        HandlerSink::new(move |message: Message| {
            let arrivals = arrivals.clone();
            async move {
                arrivals.lock().unwrap().push((n(&message), Instant::now()));
                Ok(())
            }
        })
    };
    let poll = Duration::from_millis(50);
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .poll_interval(poll)
            .build(),
    );
    eventually(LIMIT, "the five events not cancelled", || async {
        arrivals.lock().unwrap().len() == 5
    })
    .await;
    // Nothing more comes: the cancelled event is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    let arrivals = arrivals.lock().unwrap().clone();
    let order: Vec<i64> = arrivals.iter().map(|(n, _)| *n).collect();
    assert_eq!(order.len(), 5, "{order:?}");
    assert!(
        !order.contains(&4),
        "a cancelled event was published: {order:?}"
    );
    let at = |n: i64| arrivals.iter().find(|(m, _)| *m == n).unwrap().1;
    for n in [1, 5] {
        assert!(
            at(n) < start + delay,
            "event {n} waited for the delayed ones: {order:?}"
        );
    }
    for n in [0, 2, 3] {
        let (early, late) = (
            start + delay,
            committed + delay + poll + Duration::from_secs(2),
        );
        assert!(
            at(n) >= early,
            "event {n} published {:?} early",
            early - at(n)
        );
        assert!(at(n) <= late, "event {n} published {:?} late", at(n) - late);
    }
    assert_eq!(table.remaining().await, 0);

    // The log delivers in commit order: a delay cannot be honoured there.
    let tailed = table.outbox.clone().log_tailing();
    let mut tx = table.pool.begin().await.unwrap();
    let refused = tailed
        .record(&mut *tx, &event(9, "agg-9").deliver_after(delay))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, outbox::Error::Unsupported { .. }),
        "{refused}"
    );
    drop(tx);
    table.drop_table().await;
}

/// The enrichment step between claim and sink: every message published as it rewrote it, a
/// failing enrichment retried (its aggregate's later events waiting for it) then, when it fails
/// for good, a dead letter — nothing lost, nothing out of order, and the relay's own fields
/// (id, seq) kept whatever the step returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrichment_rewrites_messages_and_fails_like_a_sink() {
    let table = RelayTable::<Pg>::new().await;
    table.preload(90, 3).await; // agg-k holds k, k+3, k+6, ...
    let (flaky, poison) = (7, 20); // agg-1 and agg-2
    let tries = Arc::new(AtomicUsize::new(0));
    let enrich = {
        let tries = tries.clone();
        move |mut message: Message| {
            let tries = tries.clone();
            async move {
                let n = n(&message);
                if n == flaky && tries.fetch_add(1, AtomicOrdering::SeqCst) < 2 {
                    return Err(SinkError::transient("lookup timed out"));
                }
                if n == poison {
                    return Err(SinkError::permanent("no such account"));
                }
                message.payload =
                    serde_json::json!({ "n": n, "owner": format!("owner-{n}") }).to_string();
                message.event_type = "Enriched".to_owned();
                message.id = uuid::Uuid::nil(); // not the step's to change
                Ok(message)
            }
        }
    };
    let delivered = Arc::new(Mutex::new(Vec::<Message>::new()));
    let sink = {
        let delivered = delivered.clone();
        HandlerSink::new(move |message: Message| {
            let delivered = delivered.clone();
            async move {
                delivered.lock().unwrap().push(message);
                Ok(())
            }
        })
    };
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .enrich(enrich)
            .batch_size(10)
            .backoff(fast_backoff())
            .build(),
    );
    eventually(LIMIT, "every event but the poison one", || async {
        delivered.lock().unwrap().len() == 89
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    let delivered = delivered.lock().unwrap().clone();
    assert_eq!(
        tries.load(AtomicOrdering::SeqCst),
        3,
        "the flaky event was tried three times"
    );
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut seen = HashSet::new();
    for message in &delivered {
        let n = n(message);
        assert!(seen.insert(n), "{n} twice");
        assert_eq!(message.event_type, "Enriched");
        assert_eq!(
            message.payload,
            serde_json::json!({ "n": n, "owner": format!("owner-{n}") }).to_string()
        );
        assert!(
            !message.id.is_nil(),
            "the id is the event's, whatever the step returned"
        );
        if let Some(before) = last.insert(message.aggregate_id.clone(), n) {
            assert!(
                before < n,
                "{} out of order: {before} then {n}",
                message.aggregate_id
            );
        }
    }
    assert!(!seen.contains(&poison));
    assert_eq!(table.count("dead_at IS NOT NULL").await, 1);
    let dead = table.outbox.dead_letters(&table.pool, 10).await.unwrap();
    assert!(dead[0].last_error.contains("no such account"), "{dead:?}");
    table.drop_table().await;
}

/// A sink whose call never answers when the batch holds event `hang_on` (as a broker call that
/// hangs), and that keeps every other event it is given.
struct Hanging {
    hang_on: i64,
    delivered: Arc<Mutex<Vec<Message>>>,
}

impl Sink for Hanging {
    async fn publish(&self, batch: &[Message]) -> Vec<outbox::relay::Delivery> {
        if batch.iter().any(|message| n(message) == self.hang_on) {
            std::future::pending::<()>().await;
        }
        self.delivered.lock().unwrap().extend(batch.iter().cloned());
        vec![Ok(()); batch.len()]
    }
}

/// A delivery that hangs — a sink call that never answers, an enrichment step that never
/// finishes — is a failed delivery after `delivery_timeout`: the event at fault ends a dead
/// letter after its attempts, with a reason that says so, and every other event is delivered
/// once, in order per aggregate. (Before, the relay waited for ever, and every aggregate with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_delivery_times_out_and_only_that_event_becomes_a_dead_letter() {
    let table = RelayTable::<Pg>::new().await;
    table.preload(60, 6).await; // agg-k holds k, k+6, k+12, ...
    let (stuck_in_sink, stuck_in_enrichment) = (27, 40); // agg-3 and agg-4
    let delivered = Arc::new(Mutex::new(Vec::<Message>::new()));
    let sink = Hanging {
        hang_on: stuck_in_sink,
        delivered: delivered.clone(),
    };
    let enrich = move |message: Message| async move {
        if n(&message) == stuck_in_enrichment {
            std::future::pending::<()>().await;
        }
        Ok(message)
    };
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .enrich(enrich)
            .batch_size(20)
            .max_attempts(3)
            .delivery_timeout(Duration::from_millis(200))
            .backoff(fast_backoff())
            .build(),
    );
    eventually(LIMIT, "both stuck events dead-lettered", || async {
        table.count("dead_at IS NOT NULL").await == 2
    })
    .await;
    eventually(LIMIT, "every other event delivered", || async {
        delivered.lock().unwrap().len() >= 58
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    let delivered: Vec<i64> = delivered.lock().unwrap().iter().map(n).collect();
    let mut expected: Vec<i64> = (0..60)
        .filter(|k| ![stuck_in_sink, stuck_in_enrichment].contains(k))
        .collect();
    let mut sorted = delivered.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "every other event, each once");
    for aggregate in 0..6 {
        let order: Vec<i64> = delivered
            .iter()
            .copied()
            .filter(|k| k % 6 == aggregate)
            .collect();
        assert!(order.is_sorted(), "agg-{aggregate} out of order: {order:?}");
    }
    let dead = table.outbox.dead_letters(&table.pool, 10).await.unwrap();
    let reason = |k: i64| {
        let letter = dead.iter().find(|d| n(&d.message) == k).unwrap();
        assert_eq!(letter.message.attempts, 3, "{k}");
        letter.last_error.clone()
    };
    assert!(
        reason(stuck_in_sink).contains("the sink did not answer within 200ms"),
        "{}",
        reason(stuck_in_sink)
    );
    assert!(
        reason(stuck_in_enrichment).contains("the enrichment step did not finish within 200ms"),
        "{}",
        reason(stuck_in_enrichment)
    );
    table.drop_table().await;
}

/// A relay aborted while its claim's `BEGIN` waits for the server's answer leaves no transaction
/// open on the pool's connection: the pool's next user's write is committed. The server's
/// answers are held at a proxy, again and again until the request held is the claim's `BEGIN`
/// (the server ran it: `idle in transaction`), and the relay is aborted then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_aborted_while_beginning_a_claim_leaves_no_transaction_open() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    let table = RelayTable::<Pg>::new().await;
    let tag = format!("b{}", &table.name[table.name.len() - 10..]);
    let options: PgConnectOptions = table.db.url().parse().unwrap();
    let target = (options.get_host(), options.get_port());
    let target = tokio::net::lookup_host(target)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = outbox_tests::Proxy::start(target).await;
    let proxied = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(
            options
                .host("127.0.0.1")
                .port(proxy.addr.port())
                .application_name(&tag),
        )
        .await
        .unwrap();
    let written = format!("{}_written", table.name);
    table
        .db
        .execute(format!("CREATE TABLE {written} (n BIGINT NOT NULL)"))
        .await;
    let sink = HandlerSink::new(|_: Message| async { Ok(()) });
    let relay = tokio::spawn(
        relay(&table, proxied.clone(), sink)
            .poll_interval(Duration::from_millis(5))
            .build()
            .run(std::future::pending()),
    );
    let held = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{tag}' \
         AND state = 'idle in transaction' AND query LIKE 'BEGIN%'"
    );
    let mut caught = false;
    for _ in 0..50 {
        proxy.hold();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if table.db.scalar(held.clone()).await == 1 {
            caught = true;
            break;
        }
        proxy.release();
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1..20))).await;
    }
    assert!(
        caught,
        "the claim's BEGIN was never the request held, in 50 tries"
    );
    relay.abort();
    let _ = relay.await;
    proxy.release();
    let write = format!("INSERT INTO {written} (n) VALUES (1)");
    tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::raw_sql(sqlx::AssertSqlSafe(write)).execute(&proxied),
    )
    .await
    .expect("the connection came back to the pool")
    .unwrap();
    assert_eq!(
        table
            .db
            .scalar(format!("SELECT count(*) FROM {written}"))
            .await,
        1,
        "the write ran in the transaction the aborted claim's BEGIN left open, and was never committed"
    );
    proxied.close().await;
    table.db.execute(format!("DROP TABLE {written}")).await;
    table.drop_table().await;
}

/// Dead letters are selected and counted by the database: by id, event type, aggregate and
/// age, with the limit applied there.
async fn dead_letters_are_filtered_and_counted_by_the_database<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    table.preload(40, 4).await; // aggregates agg-0..agg-3, ten events each
    // Every event of agg-1 and agg-2 is refused for good.
    let sink = HandlerSink::new(|message: Message| async move {
        if message.aggregate_id == "agg-1" || message.aggregate_id == "agg-2" {
            return Err(SinkError::permanent(format!(
                "refused {}",
                message.aggregate_id
            )));
        }
        Ok(())
    });
    let (stop, relay) = spawn(relay(&table, table.pool.clone(), sink).build());
    eventually(LIMIT, "20 dead letters", || async {
        table
            .outbox
            .count_dead_letters(&table.pool, &DeadLetterFilter::new())
            .await
            .unwrap()
            == 20
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();

    let outbox = &table.outbox;
    let pool = &table.pool;
    let only_agg_1 = DeadLetterFilter::new().aggregate_id("agg-1");
    let letters = outbox
        .dead_letters_where(pool, &only_agg_1, 100)
        .await
        .unwrap();
    assert_eq!(letters.len(), 10);
    assert!(
        letters
            .iter()
            .all(|letter| letter.message.aggregate_id == "agg-1")
    );
    assert!(
        letters
            .windows(2)
            .all(|w| w[0].message.seq < w[1].message.seq),
        "oldest first"
    );
    assert_eq!(letters[0].last_error, "refused agg-1");
    assert_eq!(
        outbox.count_dead_letters(pool, &only_agg_1).await.unwrap(),
        10
    );
    let limited = outbox
        .dead_letters_where(pool, &DeadLetterFilter::new(), 3)
        .await
        .unwrap();
    assert_eq!(limited.len(), 3);
    let by_id = outbox
        .dead_letters_where(pool, &DeadLetterFilter::new().id(letters[4].message.id), 10)
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].message.id, letters[4].message.id);
    let typed = DeadLetterFilter::new()
        .event_type("Numbered")
        .aggregate_type("test")
        .aggregate_id("agg-2");
    assert_eq!(outbox.count_dead_letters(pool, &typed).await.unwrap(), 10);
    let other_type = DeadLetterFilter::new().event_type("Other");
    assert_eq!(
        outbox.count_dead_letters(pool, &other_type).await.unwrap(),
        0
    );
    let old = DeadLetterFilter::new().dead_for_at_least(Duration::from_secs(3600));
    assert_eq!(
        outbox.count_dead_letters(pool, &old).await.unwrap(),
        0,
        "none is an hour dead"
    );
    let recent = DeadLetterFilter::new().dead_for_at_least(Duration::ZERO);
    assert_eq!(outbox.count_dead_letters(pool, &recent).await.unwrap(), 20);

    // The filters' index holds the dead letters alone (MySQL has no partial indexes).
    let index = format!("{}_dead_idx", table.name);
    let partial = match D::NAME {
        "PostgreSQL" => Some(format!(
            "SELECT count(*) FROM pg_indexes WHERE indexname = '{index}' \
             AND indexdef LIKE '%WHERE (dead_at IS NOT NULL)'"
        )),
        "SQLite" => Some(format!(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = '{index}' \
             AND sql LIKE '%WHERE dead_at IS NOT NULL'"
        )),
        _ => None,
    };
    if let Some(sql) = partial {
        assert_eq!(table.db.scalar(sql).await, 1, "partial index {index}");
    }
    table.drop_table().await;
}

/// The queries behind `outbox status`, `tail` and `dead-letters purge`, as library calls: the
/// counts per type, the relays at work, the events in order, and purging by filter.
async fn status_tail_and_purge_read_what_the_database_holds<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    let (outbox, pool) = (&table.outbox, &table.pool);
    outbox.check(pool).await.unwrap();
    assert_eq!(outbox.last_seq(pool).await.unwrap(), 0, "an empty table");
    table.preload(40, 4).await; // agg-0..agg-3, ten events each, type `Numbered`
    let counts = outbox.status(pool).await.unwrap();
    assert_eq!(
        counts.len(),
        1,
        "one aggregate type and event type: {counts:?}"
    );
    assert_eq!(
        (
            counts[0].aggregate_type.as_str(),
            counts[0].event_type.as_str()
        ),
        ("test", "Numbered")
    );
    assert_eq!(
        (counts[0].pending, counts[0].dead, counts[0].published),
        (40, 0, 0)
    );
    assert!(counts[0].oldest_pending.is_some());

    let events = outbox.events_after(pool, 0, 1_000).await.unwrap();
    assert_eq!(events.len(), 40);
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "in seq order"
    );
    assert_eq!(
        (0..40).collect::<Vec<_>>(),
        events.iter().map(n).collect::<Vec<_>>()
    );
    let last = outbox.last_seq(pool).await.unwrap();
    assert_eq!(last, events[39].seq);
    assert!(
        outbox
            .events_after(pool, last, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let after_ten = outbox.events_after(pool, events[9].seq, 5).await.unwrap();
    assert_eq!(
        after_ten.iter().map(n).collect::<Vec<_>>(),
        vec![10, 11, 12, 13, 14]
    );

    // agg-1 is refused for good; the rest is published and kept.
    let sink = HandlerSink::new(|message: Message| async move {
        if message.aggregate_id == "agg-1" {
            return Err(SinkError::permanent("refused"));
        }
        Ok(())
    });
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .retention(Duration::from_secs(3600))
            .build(),
    );
    eventually(LIMIT, "30 kept and 10 dead", || async {
        let counts = outbox.status(pool).await.unwrap();
        counts.len() == 1 && (counts[0].pending, counts[0].dead, counts[0].published) == (0, 10, 30)
    })
    .await;
    let relays = outbox.relays(pool).await.unwrap();
    match D::NAME {
        "SQLite" => {
            let relays = relays.expect("SQLite shows the lease holder");
            assert_eq!(relays.len(), 1, "{relays:?}");
            assert_eq!(relays[0].detail, "holds the lease");
        }
        "MariaDB/MySQL" => assert_eq!(relays, None, "MySQL cannot tell"),
        // The test's pool does not name its connections: no relay is recognised.
        _ => assert_eq!(relays, Some(Vec::new())),
    }
    stop.send(()).unwrap();
    relay.await.unwrap();
    assert_eq!(outbox.status(pool).await.unwrap()[0].oldest_pending, None);
    if D::NAME == "SQLite" {
        assert_eq!(
            outbox.relays(pool).await.unwrap(),
            Some(Vec::new()),
            "lease released"
        );
    }

    let some = DeadLetterFilter::new()
        .aggregate_id("agg-1")
        .event_type("Other");
    assert_eq!(outbox.purge_dead_letters(pool, &some).await.unwrap(), 0);
    let first = outbox.dead_letters(pool, 1).await.unwrap();
    let one = DeadLetterFilter::new().id(first[0].message.id);
    assert_eq!(outbox.purge_dead_letters(pool, &one).await.unwrap(), 1);
    let all = DeadLetterFilter::new();
    assert_eq!(outbox.purge_dead_letters(pool, &all).await.unwrap(), 9);
    assert_eq!(outbox.count_dead_letters(pool, &all).await.unwrap(), 0);
    assert_eq!(
        table.count("published_at IS NOT NULL").await,
        30,
        "kept events untouched"
    );

    let missing = outbox::Outbox::for_table(
        outbox::TableName::new(format!("{}_missing", table.name)).unwrap(),
    );
    let error = missing.check(pool).await.unwrap_err();
    assert!(error.to_string().contains("_missing"), "{error}");
    table.drop_table().await;
}

/// Two, then four relays over 20,000 events of one table: the database breaks no deadlock
/// between their settlements (`outbox_deadlocks_total{operation="settle"}` stays at zero), and
/// without a fault no event is published twice. Claims that deadlock are counted and reported:
/// they publish nothing and are simply tried again.
async fn several_relays_settle_without_deadlocks_or_duplicates<D: TestDb>() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("no other recorder in this test process");
    for relays in [2, 4] {
        let table = RelayTable::<D>::new().await;
        table.preload(20_000, 2_000).await;
        let deliveries: Arc<Mutex<HashMap<uuid::Uuid, u32>>> = Arc::default();
        let running: Vec<_> = (0..relays)
            .map(|_| {
                let deliveries = deliveries.clone();
                let sink = HandlerSink::new(move |message: Message| {
                    let deliveries = deliveries.clone();
                    async move {
                        *deliveries.lock().unwrap().entry(message.id).or_default() += 1;
                        Ok(())
                    }
                });
                spawn(
                    relay(&table, table.pool.clone(), sink)
                        .batch_size(500)
                        .build(),
                )
            })
            .collect();
        eventually(Duration::from_secs(180), "20,000 events", || async {
            deliveries.lock().unwrap().len() >= 20_000 && table.remaining().await == 0
        })
        .await;
        for (stop, relay) in running {
            stop.send(()).unwrap();
            relay.await.unwrap();
        }
        let deliveries = deliveries.lock().unwrap().clone();
        assert_eq!(deliveries.len(), 20_000);
        let twice = deliveries.values().filter(|&&n| n > 1).count();
        assert_eq!(
            twice, 0,
            "{relays} relays published {twice} events more than once"
        );

        let mut deadlocks = HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            if key.name() != "outbox_deadlocks_total"
                || !key
                    .labels()
                    .any(|l| l.key() == "table" && l.value() == table.name)
            {
                continue;
            }
            let operation = key
                .labels()
                .find(|l| l.key() == "operation")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            if let DebugValue::Counter(n) = value {
                deadlocks.insert(operation, n);
            }
        }
        let (settle, claim) = (
            deadlocks.get("settle").copied().unwrap_or(0),
            deadlocks.get("claim").copied().unwrap_or(0),
        );
        eprintln!(
            "{}: {relays} relays, 20,000 events: {settle} settle and {claim} claim deadlocks",
            D::NAME
        );
        assert_eq!(
            settle, 0,
            "{relays} relays deadlocked {settle} times in settlements"
        );
        table.drop_table().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_on_postgres_settle_without_deadlocks_or_duplicates() {
    several_relays_settle_without_deadlocks_or_duplicates::<Pg>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_on_mariadb_settle_without_deadlocks_or_duplicates() {
    several_relays_settle_without_deadlocks_or_duplicates::<My>().await;
}

/// A sink that keeps order and notes each batch it is handed.
struct Recording(Arc<Mutex<Vec<Vec<Message>>>>);

impl Sink for Recording {
    async fn publish(&self, batch: &[Message]) -> Vec<outbox::relay::Delivery> {
        self.0.lock().unwrap().push(batch.to_vec());
        batch.iter().map(|_| Ok(())).collect()
    }

    fn keeps_order(&self) -> bool {
        true
    }
}

/// With a byte budget, each claim holds events up to it (or one event), and every event is
/// still published, in per-aggregate order.
async fn byte_budget_splits_batches_and_keeps_order<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    table.preload(60, 6).await;
    let batches = Arc::new(Mutex::new(Vec::new()));
    let sink = Recording(batches.clone());
    let budget = 40;
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .batch_size(500)
            .max_batch_bytes(budget)
            .build(),
    );
    let seen = batches.clone();
    eventually(LIMIT, "every event published", || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().iter().map(Vec::len).sum::<usize>() == 60 }
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    let batches = batches.lock().unwrap().clone();
    for batch in &batches {
        let bytes: usize = batch.iter().map(|m| m.payload.len()).sum();
        assert!(
            batch.len() == 1 || bytes <= budget,
            "a batch of {} events and {bytes} bytes passed the budget of {budget}",
            batch.len()
        );
    }
    assert!(
        batches.len() >= 12,
        "60 events of ~9 bytes in {} batches",
        batches.len()
    );
    let mut last: HashMap<String, i64> = HashMap::new();
    for message in batches.iter().flatten() {
        let n = n(message);
        if let Some(previous) = last.insert(message.aggregate_id.clone(), n) {
            assert!(
                previous < n,
                "{} went {previous} then {n}",
                message.aggregate_id
            );
        }
    }
    assert_eq!(table.remaining().await, 0);
    table.drop_table().await;
}

/// `events_after` (what `outbox tail` follows) returns at most 16 MiB of events a call, then
/// the rest from where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_large_events_reads_them_a_budget_at_a_time() {
    let table = RelayTable::<Pg>::new().await;
    table
        .db
        .execute(format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload) \
             SELECT gen_random_uuid(), 'test', 'agg', 'Big', to_jsonb(repeat(md5(i::text), 32768)) \
             FROM generate_series(1, 40) AS i",
            table.name
        ))
        .await;
    let (mut last, mut calls, mut read) = (0, 0, 0);
    loop {
        let events = table
            .outbox
            .events_after(&table.pool, last, 1_000)
            .await
            .unwrap();
        let Some(end) = events.last() else { break };
        let bytes: usize = events.iter().map(|m| m.payload.len()).sum();
        assert!(
            bytes <= outbox::relay::DEFAULT_MAX_BATCH_BYTES,
            "{} events, {bytes} bytes in one call",
            events.len()
        );
        last = end.seq;
        read += events.len();
        calls += 1;
    }
    assert_eq!(read, 40);
    assert!(calls >= 3, "40 MiB in {calls} calls");
    table.drop_table().await;
}

/// On PostgreSQL, heads that lie beyond a claim's window (here behind 1,100 events of one
/// aggregate not yet due) are found by a search in aggregate key order that goes on where the
/// last one stopped: 150 waiting aggregates before them in key order, more than one search
/// covers, do not keep the 50 others from being published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_beyond_the_window_are_reached_however_many_aggregates_wait_before_them() {
    let table = RelayTable::<Pg>::new().await;
    let insert = |aggregate: &str, count: i64, later: bool| {
        format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload, available_at) \
             SELECT gen_random_uuid(), 'test', {aggregate}, 'Numbered', jsonb_build_object('n', i), \
               clock_timestamp() + interval '{} hour' FROM generate_series(1, {count}) AS i",
            table.name,
            if later { 1 } else { 0 }
        )
    };
    table.db.execute(insert("'busy'", 1_100, true)).await;
    table
        .db
        .execute(insert("'a-' || lpad(i::text, 3, '0')", 150, true))
        .await;
    table
        .db
        .execute(insert("'z-' || lpad(i::text, 3, '0')", 50, false))
        .await;
    let (sink, mut received) = ChannelSink::new(64);
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .batch_size(10)
            .build(),
    );
    let mut seen = HashSet::new();
    while seen.len() < 50 {
        let message = tokio::time::timeout(Duration::from_secs(20), received.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of the 50 due events were published", seen.len()))
            .unwrap();
        assert!(
            message.aggregate_id.starts_with("z-"),
            "{} was not due",
            message.aggregate_id
        );
        seen.insert(message.aggregate_id);
    }
    stop.send(()).unwrap();
    relay.await.unwrap();
    assert_eq!(table.remaining().await, 1_250);
    table.drop_table().await;
}

/// On PostgreSQL a claim's lock statements return small events whole and read the others
/// afterwards, as far as the byte budget goes: a table mixing small events, large ones stored
/// plainly and large compressed ones is relayed whole, once each, in per-aggregate order, in
/// batches within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_mix_small_plain_and_compressed_events_in_order() {
    let table = RelayTable::<Pg>::new().await;
    // `i % 3`: 0 small; 1 a 3,200-byte hex string (too random to compress); 2 20,000 bytes of
    // one letter, compressed far more than the claim guesses, so that a read fetches more of
    // them than the budget takes and must hand them over in order.
    table
        .db
        .execute(format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload) \
             SELECT gen_random_uuid(), 'test', 'agg-' || (i % 2), 'Mixed', jsonb_build_object('n', i, 'pad', \
               CASE i % 3 WHEN 0 THEN '' \
                 WHEN 1 THEN (SELECT string_agg(md5(i || '-' || j), '') FROM generate_series(1, 100) AS j) \
                 ELSE repeat('x', 20000) END) \
             FROM generate_series(0, 89) AS i",
            table.name
        ))
        .await;
    let stored = |condition: &'static str| table.count(condition);
    assert_eq!(
        stored("pg_column_compression(payload) IS NOT NULL").await,
        30,
        "the repeated letters are stored compressed"
    );
    assert_eq!(
        stored("pg_column_compression(payload) IS NULL AND pg_column_size(payload) > 3000").await,
        30,
        "the hex pads are stored plainly"
    );
    let batches = Arc::new(Mutex::new(Vec::new()));
    let budget = 50_000;
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), Recording(batches.clone()))
            .batch_size(500)
            .max_batch_bytes(budget)
            .build(),
    );
    let seen = batches.clone();
    eventually(LIMIT, "every event published", || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().iter().map(Vec::len).sum::<usize>() >= 90 }
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    let batches = batches.lock().unwrap().clone();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut published = HashSet::new();
    for batch in &batches {
        let bytes: usize = batch.iter().map(|m| m.payload.len()).sum();
        assert!(
            batch.len() == 1 || bytes <= budget,
            "a batch of {} events and {bytes} bytes passed the budget of {budget}",
            batch.len()
        );
        for message in batch {
            let n = n(message);
            assert!(published.insert(n), "event {n} published twice");
            let payload: serde_json::Value = serde_json::from_str(&message.payload).unwrap();
            let pad = payload["pad"].as_str().unwrap().len();
            let expected = [0, 3_200, 20_000][usize::try_from(n % 3).unwrap()];
            assert_eq!(pad, expected, "event {n} arrived with a pad of {pad} bytes");
            if let Some(previous) = last.insert(message.aggregate_id.clone(), n) {
                assert!(
                    previous < n,
                    "{} went {previous} then {n}",
                    message.aggregate_id
                );
            }
        }
    }
    assert_eq!(published.len(), 90);
    assert!(batches.len() > 1, "90 events of up to 20 KB in one batch");
    assert_eq!(table.remaining().await, 0);
    table.drop_table().await;
}

/// One test per generic test above and dialect.
macro_rules! relay_tests {
    ($module:ident, $db:ty) => {
        mod $module {
            use super::*;

            relay_tests!(@each $db;
                committed_events_are_published_and_rolled_back_events_never_are,
                four_racing_relays_keep_per_aggregate_order,
                relay_aborted_mid_batch_loses_nothing_and_duplicates_at_most_its_batches,
                relay_survives_cut_connections_and_a_failing_sink,
                poison_event_becomes_a_dead_letter_and_replays_once_fixed,
                retention_keeps_published_events_then_purges_them,
                relay_process_killed_with_sigkill_loses_nothing,
                a_poison_event_that_kills_the_relay_process_ends_a_dead_letter,
                unordered_relay_lets_later_events_pass_a_failing_one,
                dead_letters_are_filtered_and_counted_by_the_database,
                status_tail_and_purge_read_what_the_database_holds,
                byte_budget_splits_batches_and_keeps_order,
                delayed_events_wait_for_their_time_and_can_be_cancelled
            );
        }
    };
    (@each $db:ty; $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test::<$db>().await;
            }
        )*
    };
}

relay_tests!(postgres, Pg);
relay_tests!(mysql, My);
relay_tests!(sqlite, Lite);

/// One relay for many outboxes: 20 tenant schemas with an `outbox` table each, one tenant with
/// a backlog published slowly, the others with a little; every tenant's events delivered in
/// order; an event of a quiet tenant published while the busy one's backlog is still there (a
/// backlog delays others by a batch per turn, not by its size); a tenant created while the
/// relay runs served within a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_serves_many_tenants_fairly_and_finds_new_ones() {
    use std::time::Instant;

    use outbox::relay::many::Outboxes;
    use outbox::{Outbox, TableName};
    let db = Pg::connect().await;
    let pool = db.pool().clone();
    let prefix = format!("mt{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let tenant = |t: usize| format!("{prefix}_t{t:02}");
    let create = |t: usize, events: i64| {
        let pool = pool.clone();
        let schema = tenant(t);
        async move {
            let outbox = Outbox::for_table(TableName::new(format!("{schema}.outbox")).unwrap());
            outbox.migrate(&pool).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO \"{schema}\".outbox (id, aggregate_type, aggregate_id, event_type, payload) \
                 SELECT gen_random_uuid(), '{schema}', 'agg-' || (i % 4), 'Numbered', jsonb_build_object('n', i) \
                 FROM generate_series(0, $1 - 1) AS i"
            )))
            .bind(events)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let busy = 3_000;
    create(0, busy).await;
    for t in 1..20 {
        create(t, 20).await;
    }

    let delivered = Arc::new(Mutex::new(Vec::<(String, String, i64, Instant)>::new()));
    let sink = {
        let (delivered, busy_tenant) = (delivered.clone(), tenant(0));
        HandlerSink::new(move |message: Message| {
            let (delivered, busy_tenant) = (delivered.clone(), busy_tenant.clone());
            async move {
                if message.aggregate_type == busy_tenant {
                    tokio::time::sleep(Duration::from_millis(2)).await; // a slow tenant
                }
                delivered.lock().unwrap().push((
                    message.aggregate_type.clone(),
                    message.aggregate_id.clone(),
                    n(&message),
                    Instant::now(),
                ));
                Ok(())
            }
        })
    };
    let outboxes = Outboxes::matching(pool.clone(), &format!("{prefix}_t*.outbox"))
        .unwrap()
        .refresh_every(Duration::from_millis(500));
    assert_eq!(outboxes.discover().await.unwrap().len(), 20);
    let (stop, relay) = spawn(
        Relay::builder(outboxes, sink)
            .batch_size(100)
            .poll_interval(Duration::from_millis(20))
            .build(),
    );

    // A quiet tenant's new event, while the busy one's backlog takes seconds to publish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recorded = Instant::now();
    {
        let schema = tenant(7);
        let outbox = Outbox::for_table(TableName::new(format!("{schema}.outbox")).unwrap());
        let mut tx = pool.begin().await.unwrap();
        outbox
            .record(
                &mut *tx,
                &Event::new(
                    &schema,
                    "Numbered",
                    Some("agg-0"),
                    &serde_json::json!({ "n": 1000 }),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let busy_published = |delivered: &[(String, String, i64, Instant)]| {
        delivered.iter().filter(|(t, ..)| *t == tenant(0)).count()
    };
    eventually(LIMIT, "the quiet tenant's new event", || async {
        delivered
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _, n, _)| *t == tenant(7) && *n == 1000)
    })
    .await;
    {
        let delivered = delivered.lock().unwrap();
        let arrived = delivered
            .iter()
            .find(|(t, _, n, _)| *t == tenant(7) && *n == 1000)
            .unwrap()
            .3;
        let behind = busy as usize - busy_published(&delivered);
        eprintln!(
            "the quiet tenant's event: published {:?} after it was recorded, {behind} of the busy tenant's {busy} still waiting",
            arrived - recorded
        );
        assert!(
            behind > 1_000,
            "the quiet tenant waited for the busy one's backlog: {behind} of it left"
        );
        assert!(
            arrived - recorded < Duration::from_secs(3),
            "published {:?} after it was recorded",
            arrived - recorded
        );
    }

    // A tenant created now is found at the next refresh.
    create(20, 10).await;
    eventually(LIMIT, "every event of the 21 tenants", || async {
        delivered.lock().unwrap().len() == busy as usize + 19 * 20 + 1 + 10
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();

    let delivered = delivered.lock().unwrap().clone();
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    for (t, aggregate, n, _) in &delivered {
        if let Some(before) = last.insert((t.clone(), aggregate.clone()), *n) {
            assert!(before < *n, "{t}/{aggregate}: {before} then {n}");
        }
    }
    let tenants: HashSet<&String> = delivered.iter().map(|(t, ..)| t).collect();
    assert_eq!(tenants.len(), 21);
    for t in 0..=20 {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{}\" CASCADE",
            tenant(t)
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
}
