//! Bounded memory: a relay claiming events of a megabyte each holds no more than its byte
//! budget (and one event) at once, measured as the peak resident memory of this process; the
//! same relay without a budget holds the whole batch. Alone in its binary, so that no other
//! test's allocations count.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outbox::relay::{HandlerSink, Message, Relay};
use outbox_tests::{Pg, RelayTable, TestDb, eventually, spawn};

const EVENTS: usize = 200;
const MIB: usize = 1024 * 1024;

/// A kibibyte-sized line of `/proc/self/status`, in bytes.
fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap();
    kib * 1024
}

/// Resets the peak resident set size (`VmHWM`) to the current one.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// Preloads `EVENTS` events whose payload is a JSON string of 1 MiB, half of them followers of
/// another event of their aggregate.
async fn preload(table: &RelayTable<Pg>) {
    table
        .db
        .execute(format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload) \
             SELECT gen_random_uuid(), 'test', 'agg-' || (i % ({EVENTS} / 2)), 'Big', \
             to_jsonb(repeat(md5(i::text), 32768)) FROM generate_series(1, {EVENTS}) AS i",
            table.name
        ))
        .await;
}

/// Relays the table with `budget`; the peak memory above the start, and the largest batch.
async fn relay_with(table: &RelayTable<Pg>, budget: usize) -> (usize, usize) {
    preload(table).await;
    let delivered = Arc::new(AtomicUsize::new(0));
    let largest = Arc::new(AtomicUsize::new(0));
    let counted = delivered.clone();
    let sink = HandlerSink::new(move |message: Message| {
        assert!(message.payload.len() > MIB, "the payload arrived whole");
        counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    });
    let sink = Batches {
        inner: sink,
        largest: largest.clone(),
    };
    let before = status_kib("VmRSS:");
    reset_peak();
    let (stop, relay) = spawn(
        Relay::builder(table.pool.clone(), sink)
            .outbox(&table.outbox)
            .batch_size(500)
            .max_batch_bytes(budget)
            .build(),
    );
    // Alone it takes some 20 s; beside the whole suite on 2 cores it has needed over 120 s.
    // Waits for the table to be empty too: a relay stopped between its last delivery and the
    // commit of its settlement would leave events for the next run to deliver again.
    eventually(
        Duration::from_secs(400),
        "the relay to publish and settle every event",
        || {
            let delivered = delivered.clone();
            async move { delivered.load(Ordering::SeqCst) >= EVENTS && table.remaining().await == 0 }
        },
    )
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        EVENTS,
        "each event delivered once"
    );
    let peak = status_kib("VmHWM:");
    (peak.saturating_sub(before), largest.load(Ordering::SeqCst))
}

/// Notes the most events the relay hands over at once. The sink keeps order, so that an
/// aggregate's events come together and a wave is the whole claim.
struct Batches<K> {
    inner: K,
    largest: Arc<AtomicUsize>,
}

impl<K: outbox::relay::Sink> outbox::relay::Sink for Batches<K> {
    async fn publish(&self, batch: &[Message]) -> Vec<outbox::relay::Delivery> {
        self.largest.fetch_max(batch.len(), Ordering::SeqCst);
        self.inner.publish(batch).await
    }

    fn keeps_order(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_holds_its_byte_budget_not_its_batch() {
    let table = RelayTable::<Pg>::new().await;
    let (bounded, largest) = relay_with(&table, 4 * MIB).await;
    assert!(
        largest <= 4,
        "a 4 MiB budget took {largest} events of 1 MiB at once"
    );
    assert!(
        bounded < 48 * MIB,
        "with a 4 MiB budget the relay's memory grew by {} MiB",
        bounded / MIB
    );
    // The control: without a budget the claim takes the whole table, and memory shows it.
    let (unbounded, largest) = relay_with(&table, usize::MAX).await;
    assert_eq!(largest, EVENTS, "without a budget, one batch");
    assert!(
        unbounded > 150 * MIB,
        "without a budget the relay grew by only {} MiB: the measure cannot tell",
        unbounded / MIB
    );
    println!(
        "peak memory growth: {} MiB with a 4 MiB budget, {} MiB without",
        bounded / MIB,
        unbounded / MIB
    );
    table.drop_table().await;
}
