//! `relay`: events per second from a preloaded table into the in-process sink, against the
//! database alone claiming and deleting the same rows; commit-to-publish latency at a steady
//! rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::relay::{ChannelSink, Delivery, HandlerSink, IntoSource, Message, Relay, Sink};
use outbox::{Event, Outbox, TableName};
use sqlx::{AssertSqlSafe, PgPool};

const TABLE: &str = "outbox_bench_relay";
pub(crate) const EVENTS: i64 = 200_000;
const AGGREGATES: i64 = 20_000;
const BATCH: usize = 1_000;
/// The hot-aggregate scenario: this many aggregates hold `HOT_PERCENT`% of the events, the rest
/// are spread over `AGGREGATES`.
const HOT_AGGREGATES: i64 = 16;
const HOT_PERCENT: i64 = 90;

fn outbox(notify: bool) -> Outbox {
    Outbox::for_table(TableName::from_static(TABLE)).notify_on_commit(notify)
}

pub(crate) async fn preload(pool: &PgPool) -> Result<(), sqlx::Error> {
    preload_over(pool, EVENTS, AGGREGATES).await
}

/// `events` events spread over `aggregates` aggregates, in a freshly emptied table.
async fn preload_over(pool: &PgPool, events: i64, aggregates: i64) -> Result<(), sqlx::Error> {
    preload_as(pool, events, &format!("'acc-' || (i % {aggregates})")).await
}

/// `EVENTS` events, `HOT_PERCENT`% of them in `HOT_AGGREGATES` aggregates.
async fn preload_hot(pool: &PgPool) -> Result<(), sqlx::Error> {
    let aggregate = format!(
        "CASE WHEN i % 100 < {HOT_PERCENT} THEN 'hot-' || (i % {HOT_AGGREGATES}) \
         ELSE 'acc-' || (i % {AGGREGATES}) END"
    );
    preload_as(pool, EVENTS, &aggregate).await
}

/// `events` events, the `i`th of aggregate `aggregate` (SQL in `i`), in a freshly emptied table.
async fn preload_as(pool: &PgPool, events: i64, aggregate: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {TABLE}")))
        .execute(pool)
        .await?;
    let sql = format!(
        "INSERT INTO {TABLE} (id, aggregate_type, aggregate_id, event_type, payload) \
         SELECT gen_random_uuid(), 'account', {aggregate}, 'Numbered', jsonb_build_object('n', i) \
         FROM generate_series(1, {events}) AS i"
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(pool).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("VACUUM ANALYZE {TABLE}")))
        .execute(pool)
        .await?;
    Ok(())
}

/// The database alone: claim `BATCH` rows with `SKIP LOCKED` and delete them, until empty.
async fn baseline(pool: &PgPool) -> Result<f64, sqlx::Error> {
    preload(pool).await?;
    let sql = format!(
        "DELETE FROM {TABLE} WHERE seq IN (SELECT seq FROM {TABLE} ORDER BY seq LIMIT {BATCH} FOR UPDATE SKIP LOCKED)"
    );
    let start = Instant::now();
    let mut total = 0;
    loop {
        let done = sqlx::query(AssertSqlSafe(sql.clone()))
            .execute(pool)
            .await?
            .rows_affected();
        if done == 0 {
            break;
        }
        total += done;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// A sink wrapped to count what it delivered and, when asked, note when each event was.
pub(crate) struct Observed<K> {
    inner: K,
    delivered: Arc<AtomicUsize>,
    times: Option<Arc<Mutex<HashMap<uuid::Uuid, Instant>>>>,
}

impl<K> Observed<K> {
    /// `inner`, counting its deliveries into `delivered`.
    pub(crate) fn counting(inner: K, delivered: Arc<AtomicUsize>) -> Self {
        Observed {
            inner,
            delivered,
            times: None,
        }
    }
}

impl<K: Sink> Sink for Observed<K> {
    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        let results = self.inner.publish(batch).await;
        let now = Instant::now();
        let ok = results.iter().filter(|result| result.is_ok()).count();
        self.delivered.fetch_add(ok, AtomicOrdering::Relaxed);
        if let Some(times) = &self.times {
            let mut times = times.lock().expect("lock");
            for (message, result) in batch.iter().zip(&results) {
                if result.is_ok() {
                    times.entry(message.id).or_insert(now);
                }
            }
        }
        results
    }

    fn keeps_order(&self) -> bool {
        self.inner.keeps_order()
    }

    fn destination(&self, message: &Message) -> Option<outbox::relay::Destination> {
        self.inner.destination(message)
    }
}

/// The in-process sink: delivery costs nothing, what is measured is the relay and the database.
pub(crate) fn in_process() -> impl Sink {
    HandlerSink::new(|_: Message| std::future::ready(Ok(())))
}

/// An in-process sink that keeps order (a channel, drained by a task): the baseline of a sink
/// that takes an aggregate's consecutive events together.
pub(crate) fn in_process_ordered() -> ChannelSink {
    let (sink, mut events) = ChannelSink::new(4096);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    sink
}

/// One relay per sink in `sinks`, in this process, over the preloaded table.
pub(crate) async fn throughput<K: Sink>(
    pool: &PgPool,
    sinks: Vec<K>,
) -> Result<f64, Box<dyn std::error::Error>> {
    throughput_over(pool, sinks, EVENTS, AGGREGATES).await
}

/// Events per second through `sinks`, one relay each, from `events` preloaded events of
/// `aggregates` aggregates.
pub(crate) async fn throughput_over<K: Sink>(
    pool: &PgPool,
    sinks: Vec<K>,
    events: i64,
    aggregates: i64,
) -> Result<f64, Box<dyn std::error::Error>> {
    preload_over(pool, events, aggregates).await?;
    drain(pool, sinks, events).await
}

/// Events of the preloaded table with `headers` recorded (a JSON object's text).
pub(crate) async fn preload_with_headers(pool: &PgPool, headers: &str) -> Result<(), sqlx::Error> {
    preload(pool).await?;
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {TABLE} SET headers = $1::jsonb"
    )))
    .bind(headers)
    .execute(pool)
    .await?;
    Ok(())
}

/// Events per second through `sinks`, one relay each, until `events` are delivered from the
/// table as it is.
pub(crate) async fn drain<K: Sink>(
    pool: &PgPool,
    sinks: Vec<K>,
    events: i64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let delivered = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let relays: Vec<_> = sinks
        .into_iter()
        .map(|inner| {
            let sink = Observed {
                inner,
                delivered: delivered.clone(),
                times: None,
            };
            let relay = Relay::builder(pool.clone(), sink)
                .outbox(&outbox(false))
                .batch_size(BATCH)
                .build();
            tokio::spawn(relay.run(std::future::pending()))
        })
        .collect();
    while delivered.load(AtomicOrdering::Relaxed) < events as usize {
        if start.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "the relay delivered {} of {events} events in 5 minutes",
                delivered.load(AtomicOrdering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = events as f64 / start.elapsed().as_secs_f64();
    for relay in relays {
        relay.abort();
    }
    Ok(rate)
}

/// Commit-to-publish latency of events committed at `rate` per second for `seconds`.
pub(crate) async fn latency<K: Sink>(
    pool: &PgPool,
    inner: K,
    notify: bool,
    rate: u64,
    seconds: u64,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let outbox = outbox(notify);
    outbox.migrate(pool).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {TABLE}")))
        .execute(pool)
        .await?;
    let poll = if notify {
        // Woken by NOTIFY: polling only covers lost notifications.
        Some(Duration::from_secs(1))
    } else {
        std::env::var("OUTBOX_BENCH_POLL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    };
    let label = if notify { "notify" } else { "polling" };
    latency_from(
        pool,
        pool.clone(),
        &outbox,
        inner,
        poll,
        rate,
        seconds,
        label,
    )
    .await
}

/// Commit-to-publish latency of events recorded into `outbox` at `rate` per second for
/// `seconds`, relayed from `from` (a pool, or the transaction log).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn latency_from<F: IntoSource, K: Sink>(
    pool: &PgPool,
    from: F,
    outbox: &Outbox,
    inner: K,
    poll: Option<Duration>,
    rate: u64,
    seconds: u64,
    label: &str,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let received: Arc<Mutex<HashMap<uuid::Uuid, Instant>>> = Arc::default();
    let sink = Observed {
        inner,
        delivered: Arc::default(),
        times: Some(received.clone()),
    };
    let mut builder = Relay::builder(from, sink).outbox(outbox);
    if let Some(poll) = poll {
        builder = builder.poll_interval(poll);
    }
    let relay = tokio::spawn(builder.build().run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let total = rate * seconds;
    let mut committed = Vec::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    for i in 0..total {
        ticker.tick().await;
        let mut tx = pool.begin().await?;
        let payload = serde_json::json!({ "n": i });
        let event = Event::new("account", "Numbered", Some(i % 100), &payload)?;
        let id = outbox.record(&mut *tx, &event).await?;
        tx.commit().await?;
        committed.push((id, Instant::now()));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().expect("lock").len() < committed.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.abort();
    let received = received.lock().expect("lock");
    let mut latencies: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| {
            received
                .get(id)
                .map(|got| got.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    if latencies.len() != committed.len() {
        return Err(format!(
            "only {} of {} events arrived",
            latencies.len(),
            committed.len()
        )
        .into());
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    if std::env::var("OUTBOX_BENCH_DEBUG").is_ok() {
        let mut times: Vec<Instant> = received.values().copied().collect();
        times.sort();
        let gaps: Vec<f64> = times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)
            .collect();
        let big = gaps.iter().filter(|g| **g > 10.0).count();
        let mut sorted = gaps.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!(
            "{label}: publish gaps: {} over 10 ms, largest {:.1} ms; mean batch {:.1}",
            big,
            sorted.last().copied().unwrap_or(0.0),
            times.len() as f64 / (big + 1) as f64
        );
        eprintln!(
            "{label}: p10 {:.1} p50 {:.1} p90 {:.1} p95 {:.1} p99 {:.1} max {:.1}",
            at(0.1),
            at(0.5),
            at(0.9),
            at(0.95),
            at(0.99),
            at(1.0)
        );
    }
    Ok((at(0.50), at(0.99)))
}

/// How long latency is measured: `OUTBOX_BENCH_SECONDS`, default 5.
pub(crate) fn latency_seconds() -> u64 {
    std::env::var("OUTBOX_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Creates the benchmark's outbox table afresh.
pub(crate) async fn fresh_table(pool: &PgPool) -> Result<(), Box<dyn std::error::Error>> {
    drop_table(pool).await?;
    outbox(false).migrate(pool).await?;
    Ok(())
}

pub(crate) async fn drop_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
        .execute(pool)
        .await?;
    Ok(())
}

/// Drain rates of one round of [`scale`]: events per second.
#[derive(Clone, Copy, Default)]
pub(crate) struct Scale {
    base: f64,
    pub(crate) one: f64,
    two: f64,
    four: f64,
    hot: f64,
    hot_four: f64,
    /// 1 relay on a table without the relays' journal: what noting the claimed events costs.
    unjournaled: f64,
}

impl Scale {
    /// The `summary:` line's fields for these rates.
    pub(crate) fn summary(&self) -> String {
        format!(
            "events_per_s_1={:.0} events_per_s_2={:.0} events_per_s_4={:.0} \
             hot_events_per_s_1={:.0} hot_events_per_s_4={:.0}",
            self.one, self.two, self.four, self.hot, self.hot_four
        )
    }
}

/// How the relay scales: the database alone, 1, 2 and 4 relays over spread aggregates, and 1
/// and 4 relays over hot ones; each the median of `rounds` interleaved rounds. Prints the table.
pub(crate) async fn scale(
    pool: &PgPool,
    rounds: usize,
) -> Result<Scale, Box<dyn std::error::Error>> {
    fresh_table(pool).await?;
    let relays = |n: usize| (0..n).map(|_| in_process()).collect::<Vec<_>>();
    let mut runs = Vec::new();
    for _ in 0..rounds.max(1) {
        // Fields are evaluated in the order written: the rounds' scenarios interleave.
        runs.push(Scale {
            base: baseline(pool).await?,
            one: throughput(pool, relays(1)).await?,
            two: throughput(pool, relays(2)).await?,
            four: throughput(pool, relays(4)).await?,
            hot: {
                preload_hot(pool).await?;
                drain(pool, relays(1), EVENTS).await?
            },
            hot_four: {
                preload_hot(pool).await?;
                drain(pool, relays(4), EVENTS).await?
            },
            unjournaled: {
                // As a table migrated by a version without the journal: nothing is noted.
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP TABLE IF EXISTS {TABLE}_handling"
                )))
                .execute(pool)
                .await?;
                let rate = throughput(pool, relays(1)).await?;
                outbox(false).migrate(pool).await?;
                rate
            },
        });
    }
    let median = |pick: fn(&Scale) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let m = Scale {
        base: median(|s| s.base),
        one: median(|s| s.one),
        two: median(|s| s.two),
        four: median(|s| s.four),
        hot: median(|s| s.hot),
        hot_four: median(|s| s.hot_four),
        unjournaled: median(|s| s.unjournaled),
    };
    let of = if rounds > 1 {
        format!(", medians of {rounds} interleaved rounds")
    } else {
        String::new()
    };
    println!(
        "## relay: {EVENTS} preloaded events ({AGGREGATES} aggregates) into an in-process sink{of}\n"
    );
    println!("| what | events/s | ratio to the database alone | ratio to 1 relay |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| database alone: claim {BATCH} with SKIP LOCKED + delete | {:.0} | 1.000 | {:.3} |",
        m.base,
        m.base / m.one
    );
    let hot_events = format!("{HOT_PERCENT}% of the events in {HOT_AGGREGATES} aggregates");
    for (what, rate) in [
        ("1 instance".to_owned(), m.one),
        ("2 instances".to_owned(), m.two),
        ("4 instances".to_owned(), m.four),
        (format!("1 instance, {hot_events}"), m.hot),
        (format!("4 instances, {hot_events}"), m.hot_four),
        (
            "1 instance, without the journal (`<table>_handling` absent)".to_owned(),
            m.unjournaled,
        ),
    ] {
        println!(
            "| relay, {what} | {rate:.0} | {:.3} | {:.3} |",
            rate / m.base,
            rate / m.one
        );
    }
    Ok(m)
}

/// `relay-scale`: the scaling table alone, medians of `OUTBOX_BENCH_ROUNDS` rounds (default 3).
pub(crate) async fn run_scale(pool: &PgPool) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = std::env::var("OUTBOX_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let scaled = scale(pool, rounds).await?;
    drop_table(pool).await?;
    println!("\nsummary: {}", scaled.summary());
    Ok(())
}
