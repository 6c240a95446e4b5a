//! Enrichment, a hung delivery bounded by the delivery timeout, and a relay aborted while
//! beginning a claim.

use super::*;

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
pub(super) struct Hanging {
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
