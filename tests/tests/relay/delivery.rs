//! Committed ⇒ published, rolled back ⇒ never; order across racing relays; a relay aborted
//! mid-batch; cut connections and a failing sink.

use super::*;

pub(super) async fn committed_events_are_published_and_rolled_back_events_never_are<D: TestDb>() {
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

pub(super) async fn four_racing_relays_keep_per_aggregate_order<D: TestDb>() {
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

pub(super) async fn relay_aborted_mid_batch_loses_nothing_and_duplicates_at_most_its_batches<
    D: TestDb,
>() {
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
pub(super) trait CutConnections: TestDb {
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

pub(super) async fn relay_survives_cut_connections_and_a_failing_sink<D: CutConnections>() {
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
