//! Batches: the byte budget, large events, heads beyond the claim window, mixed sizes.

use super::*;

/// A sink that keeps order and notes each batch it is handed.
pub(super) struct Recording(Arc<Mutex<Vec<Vec<Message>>>>);

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
pub(super) async fn byte_budget_splits_batches_and_keeps_order<D: TestDb>() {
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
