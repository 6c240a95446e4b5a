//! Poison events, retention, a relay killed with SIGKILL, a poison event that kills the
//! relay, waking on commit, the metrics, and the unordered relay.

use super::*;

pub(super) async fn poison_event_becomes_a_dead_letter_and_replays_once_fixed<D: TestDb>() {
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

pub(super) async fn retention_keeps_published_events_then_purges_them<D: TestDb>() {
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

pub(super) async fn relay_process_killed_with_sigkill_loses_nothing<D: TestDb>() {
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
pub(super) async fn a_poison_event_that_kills_the_relay_process_ends_a_dead_letter<D: TestDb>() {
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

pub(super) async fn unordered_relay_lets_later_events_pass_a_failing_one<D: TestDb>() {
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
