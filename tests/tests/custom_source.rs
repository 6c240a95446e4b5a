//! The relay's source seam is open: a source written here, an in-memory log, relayed by
//! `Relay::from_source` with the same retries, dead letters and per-aggregate order as the
//! outbox table.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::Error;
use outbox::relay::source::{Claim, Settlement, Source};
use outbox::relay::{Backoff, HandlerSink, Message, Relay, SinkError};
use tokio::sync::oneshot;

/// One event of the log and what became of it.
#[derive(Debug, Clone)]
struct Entry {
    message: Message,
    due: Instant,
    claimed: bool,
    published: bool,
    dead: Option<String>,
    last_error: Option<String>,
}

impl Entry {
    fn pending(&self) -> bool {
        !self.published && self.dead.is_none()
    }
}

/// An in-memory log of events in `seq` order.
#[derive(Debug, Clone, Default)]
struct MemoryLog(Arc<Mutex<Vec<Entry>>>);

impl MemoryLog {
    fn append(&self, aggregate: &str, n: i64) {
        let mut entries = self.0.lock().unwrap();
        let seq = entries.len() as i64 + 1;
        let message = Message::new(
            uuid::Uuid::now_v7(),
            seq,
            "account",
            aggregate,
            "Numbered",
            serde_json::json!({ "n": n }).to_string(),
        );
        entries.push(Entry {
            message,
            due: Instant::now(),
            claimed: false,
            published: false,
            dead: None,
            last_error: None,
        });
    }

    fn entries(&self) -> Vec<Entry> {
        self.0.lock().unwrap().clone()
    }
}

/// A claimed batch of the log.
struct MemoryClaim {
    log: MemoryLog,
    seqs: Vec<i64>,
    messages: Vec<Message>,
}

impl Source for MemoryLog {
    type Claim = MemoryClaim;

    /// Per aggregate: its oldest pending event if due and not claimed, and the pending events
    /// after it.
    async fn claim(&self, max: usize) -> Result<Option<MemoryClaim>, Error> {
        let mut entries = self.0.lock().unwrap();
        let now = Instant::now();
        let mut seen: HashSet<String> = HashSet::new();
        let mut open: HashSet<String> = HashSet::new();
        let mut seqs = Vec::new();
        for entry in entries.iter() {
            if !entry.pending() || seqs.len() >= max {
                continue;
            }
            let aggregate = entry.message.aggregate_id.clone();
            if seen.insert(aggregate.clone()) && !entry.claimed && entry.due <= now {
                open.insert(aggregate.clone());
            }
            if open.contains(&aggregate) {
                seqs.push(entry.message.seq);
            }
        }
        if seqs.is_empty() {
            return Ok(None);
        }
        let mut messages = Vec::new();
        for entry in entries.iter_mut() {
            if seqs.contains(&entry.message.seq) {
                entry.claimed = true;
                messages.push(entry.message.clone());
            }
        }
        Ok(Some(MemoryClaim {
            log: self.clone(),
            seqs,
            messages,
        }))
    }

    async fn wait(&self, timeout: Duration) {
        tokio::time::sleep(timeout.min(Duration::from_millis(10))).await;
    }

    async fn maintain(&self, _retention: Option<Duration>) -> Result<f64, Error> {
        let entries = self.0.lock().unwrap();
        let oldest = entries.iter().filter(|entry| entry.pending()).count();
        Ok(oldest as f64)
    }
}

impl Claim for MemoryClaim {
    fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    async fn settle(self, settlement: Settlement) -> Result<(), Error> {
        let mut entries = self.log.0.lock().unwrap();
        let mut by_seq: HashMap<i64, &mut Entry> = entries
            .iter_mut()
            .map(|entry| (entry.message.seq, entry))
            .collect();
        for seq in &settlement.published {
            by_seq.get_mut(seq).unwrap().published = true;
        }
        for (seq, error, delay) in &settlement.retry {
            let entry = by_seq.get_mut(seq).unwrap();
            entry.message = entry
                .message
                .clone()
                .with_attempts(entry.message.attempts + 1);
            entry.last_error = Some(error.clone());
            entry.due = Instant::now() + *delay;
        }
        for (seq, error) in &settlement.dead {
            by_seq.get_mut(seq).unwrap().dead = Some(error.clone());
        }
        for seq in &self.seqs {
            by_seq.get_mut(seq).unwrap().claimed = false;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_of_ones_own_gets_retries_dead_letters_and_per_aggregate_order() {
    let log = MemoryLog::default();
    for n in 0..30 {
        log.append(["a", "b", "c"][(n % 3) as usize], n);
    }
    // Event 9 (aggregate a) fails twice, then goes through; event 10 (aggregate b) is refused
    // for good; the others are delivered.
    let deliveries: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let tries: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let sink = {
        let (deliveries, tries) = (deliveries.clone(), tries.clone());
        HandlerSink::new(move |message: Message| {
            let (deliveries, tries) = (deliveries.clone(), tries.clone());
            async move {
                let n = serde_json::from_str::<serde_json::Value>(&message.payload).unwrap()["n"]
                    .as_i64()
                    .unwrap();
                let attempt = {
                    let mut tries = tries.lock().unwrap();
                    let attempt = tries.entry(n).or_default();
                    *attempt += 1;
                    *attempt
                };
                if n == 9 && attempt <= 2 {
                    return Err(SinkError::transient("broker busy"));
                }
                if n == 10 {
                    return Err(SinkError::permanent("refused: malformed"));
                }
                deliveries.lock().unwrap().push((message.aggregate_id, n));
                Ok(())
            }
        })
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::from_source(log.clone(), sink)
            .batch_size(4)
            .max_attempts(5)
            .backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(50),
            ))
            .build()
            .run(async move {
                let _ = stopped.await;
            }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.entries().iter().any(Entry::pending) {
        assert!(
            Instant::now() < deadline,
            "the log was not relayed: {:?}",
            log.entries()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    relay.await.unwrap();

    let entries = log.entries();
    let dead: Vec<_> = entries
        .iter()
        .filter(|entry| entry.dead.is_some())
        .collect();
    assert_eq!(dead.len(), 1, "{entries:?}");
    assert_eq!(dead[0].message.seq, 11, "event 10 is the dead letter");
    assert_eq!(dead[0].dead.as_deref(), Some("refused: malformed"));
    let retried = &entries[9];
    assert_eq!(
        retried.message.attempts, 2,
        "two failed attempts were recorded"
    );
    assert_eq!(retried.last_error.as_deref(), Some("broker busy"));
    assert!(retried.published);
    assert_eq!(tries.lock().unwrap()[&9], 3);

    // Every event but the dead letter, each once, each aggregate in order.
    let deliveries = deliveries.lock().unwrap().clone();
    let mut per_aggregate: HashMap<String, Vec<i64>> = HashMap::new();
    for (aggregate, n) in &deliveries {
        per_aggregate.entry(aggregate.clone()).or_default().push(*n);
    }
    for (aggregate, first) in [("a", 0), ("b", 1), ("c", 2)] {
        let expected: Vec<i64> = (first..30).step_by(3).filter(|&n| n != 10).collect();
        assert_eq!(per_aggregate[aggregate], expected, "aggregate {aggregate}");
    }
    assert_eq!(deliveries.len(), 29);
}
