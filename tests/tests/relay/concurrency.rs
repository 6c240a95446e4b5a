//! Several relays on one table: no deadlock, no duplicate.

use super::*;

/// Two, then four relays over 20,000 events of one table: the database breaks no deadlock
/// between their settlements (`outbox_deadlocks_total{operation="settle"}` stays at zero), and
/// without a fault no event is published twice. Claims that deadlock are counted and reported:
/// they publish nothing and are simply tried again.
pub(super) async fn several_relays_settle_without_deadlocks_or_duplicates<D: TestDb>() {
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
