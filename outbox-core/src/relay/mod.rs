//! The relay: moves recorded events from the outbox table to a [`Sink`], in order per
//! aggregate, at least once, and cleans up after itself.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::relay::{ChannelSink, Relay};
//!
//! let (sink, mut events) = ChannelSink::new(1024);
//! let relay = Relay::builder(pool, sink).batch_size(500).build();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let task = tokio::spawn(relay.run(async move { let _ = stopped.await; }));
//!
//! while let Some(message) = events.recv().await {
//!     println!("{} {}", message.event_type, message.payload);
//! #   break;
//! }
//! let _ = stop.send(()); // finishes the batch in hand, then stops
//! task.await?;
//! # Ok(()) }
//! ```
//!
//! # What "order" means
//!
//! Per aggregate (`aggregate_type`, `aggregate_id`), events are published in commit order —
//! which is insertion (`seq`) order whenever the writers of one aggregate serialize on it, the
//! normal case (they update the same row). The relay claims, for each aggregate, its oldest
//! pending event and the events that follow it. On PostgreSQL and MySQL/MariaDB it does so under
//! row locks (`FOR UPDATE SKIP LOCKED`, held while the sink publishes): while one relay holds an
//! aggregate's oldest event, no other relay can claim any event of that aggregate, so several
//! relays share the work without reordering. On SQLite, which has one writer and no row locks,
//! relays take turns under a lease ([`RelayBuilder::lease_ttl`]). Different aggregates flow in
//! parallel. An event that fails is retried with exponential backoff and jitter and holds back
//! the later events of its aggregate ([`Ordering::PerAggregate`], the default) until it is
//! delivered or becomes a dead letter; [`Ordering::Unordered`] lets them pass.
//!
//! # What "at least once" means
//!
//! Events are removed from the outbox in the same transaction that holds their claim, after the
//! sink confirmed them. A relay killed mid-batch loses its claim with its connection; the batch
//! is claimed again and republished: duplicates are possible, bounded by one batch per relay
//! crash, and carry the same event id so that consumers can drop them. Claims commit without
//! waiting for the disk on PostgreSQL (`synchronous_commit = off`, which needs no durability:
//! losing a settlement only republishes it), so a crash of the *database* can also republish the
//! batches settled in its last moments (PostgreSQL bounds this at three `wal_writer_delay`s,
//! 600 ms by default). On SQLite a relay that stalls longer than its lease loses it: its
//! successor publishes the batch again ([`Error::LeaseLost`]).

mod backoff;
mod enrich;
pub mod many;
mod publish;
pub mod source;
#[cfg(feature = "opentelemetry")]
mod spans;

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tracing::Instrument;

pub use crate::message::{DeadLetter, DeadLetterFilter};
pub use backoff::Backoff;
pub use enrich::Enrich;
use enrich::Enricher;
use publish::*;

/// The default bound of one delivery ([`RelayBuilder::delivery_timeout`]): 60 s.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The default byte budget of a batch ([`RelayBuilder::max_batch_bytes`]): 16 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
pub use crate::message::Message;
pub use crate::sink::{ChannelSink, Delivery, Destination, HandlerSink, Sink, SinkError};
use source::{Claim, Settlement, Source, SourceConfig};

use crate::{Error, Outbox, TableName};

/// Whether a failing event holds back the later events of its aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Ordering {
    /// Per aggregate, events are published in commit order; a failing event holds back the
    /// later events of its aggregate (only those).
    #[default]
    PerAggregate,
    /// Events are independent: failures hold nothing back, aggregates are not serialized.
    Unordered,
}

/// Settings of a [`Relay`]; see [`RelayBuilder`] for their meaning and defaults.
#[derive(Debug, Clone)]
struct Config {
    table: TableName,
    listen: bool,
    batch_size: usize,
    max_batch_bytes: usize,
    max_attempts: u32,
    backoff: Backoff,
    poll_interval: Duration,
    retention: Option<Duration>,
    ordering: Ordering,
    maintenance_interval: Duration,
    lease_ttl: Duration,
    /// The longest one call of the sink, or one message's enrichment, may take.
    delivery_timeout: Duration,
    /// The step between claim and sink, if any.
    enrich: Option<Enricher>,
}

/// Where a [`RelayBuilder`] takes its [`Source`] from: a pool, whose outbox table the relay
/// claims from ([`Relay::builder`]), or a source of your own ([`Relay::from_source`]).
/// Implemented by the library; the databases implement it for their pools.
#[diagnostic::on_unimplemented(
    message = "the relay cannot read an outbox from `{Self}`",
    label = "expected a `sqlx::Pool` of an enabled database",
    note = "give `Relay::builder` a pool (`PgPool`, `MySqlPool`, `SqlitePool`, with the outbox feature of that database on); a source of your own goes to `Relay::from_source`"
)]
pub trait IntoSource {
    /// The source the relay reads.
    type Source: Source;
    #[doc(hidden)]
    fn __into_source(self, config: &SourceConfig) -> Self::Source;
}

impl<DB: source::RelaySql> IntoSource for sqlx::Pool<DB> {
    type Source = DB::Source;

    fn __into_source(self, config: &SourceConfig) -> DB::Source {
        DB::__source(self, config)
    }
}

/// A [`Source`] given to [`Relay::from_source`], used as it is.
#[derive(Debug)]
pub struct CustomSource<S>(S);

impl<S: Source> IntoSource for CustomSource<S> {
    type Source = S;

    fn __into_source(self, _: &SourceConfig) -> S {
        self.0
    }
}

/// Builds a [`Relay`]. Every setting has a default.
#[derive(Debug)]
pub struct RelayBuilder<F, K> {
    from: F,
    sink: K,
    config: Config,
}

impl<F: IntoSource, K: Sink> RelayBuilder<F, K> {
    /// Relays from this outbox's table (default: `outbox`). With a [custom
    /// source](Relay::from_source), the table's name only labels the relay's metrics and spans.
    pub fn outbox(mut self, outbox: &Outbox) -> Self {
        self.config.table = outbox.table().clone();
        self.config.listen = outbox.notifies_on_commit();
        self
    }

    /// Passes every claimed message through `enrich` before the sink: see [`enrich`](self::enrich).
    pub fn enrich(mut self, enrich: impl Enrich) -> Self {
        self.config.enrich = Some(Enricher::new(enrich));
        self
    }

    /// Most events claimed and published at once (default 500).
    pub fn batch_size(mut self, events: usize) -> Self {
        self.config.batch_size = events.max(1);
        self
    }

    /// Most bytes of events claimed at once, counting payloads and headers (default 16 MiB): a
    /// claim stops at the first event that would pass it, so that a relay's memory stays
    /// bounded whatever the payloads, but always takes one event, however large. Events the
    /// budget leaves out are claimed by the next batch, in order. A relay tailing the log
    /// also stops taking committed events off the stream once it queues this much.
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.config.max_batch_bytes = bytes.max(1);
        self
    }

    /// Deliveries tried before an event becomes a dead letter (default 10). A
    /// [permanent](SinkError::permanent) failure dead-letters at once.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// Delay between attempts of one event, and between retries after a database error
    /// (default: from 500 ms, doubling, at most 5 minutes, with jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Sleep between polls when idle (default 25 ms): the commit-to-publish latency of an idle
    /// relay. With [`Outbox::notify_on_commit`] on PostgreSQL, the relay also wakes on commit
    /// through `LISTEN`/`NOTIFY`, and a longer interval only bounds the latency of a lost
    /// notification.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// Keeps published events for `period` (marked `published_at`) and purges them after, in
    /// bounded batches. Default: published events are deleted at once.
    pub fn retention(mut self, period: Duration) -> Self {
        self.config.retention = Some(period);
        self
    }

    /// Whether failures hold back the later events of their aggregate (default: they do).
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.config.ordering = ordering;
        self
    }

    /// SQLite only, where relays take turns rather than share the work (one writer at a time,
    /// no row locks): the working relay holds a lease, renewed as it works and released when it
    /// stops; a relay that crashed holds up its successor for at most this long (default 10 s).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl.max(Duration::from_millis(300));
        self
    }

    /// The longest one delivery may take (default 60 s): a sink call that has not answered by
    /// then, or an enrichment step that has not finished, is a failed delivery — retried with
    /// backoff, then dead-lettered — rather than a relay stalled for ever. When a call of
    /// several messages times out, the relay looks for the one at fault by halves (each half
    /// with the same bound, at most log2(batch) + 1 calls): the others are delivered, the one
    /// that hangs fails alone, and what was not tried yet is released untouched. Make it
    /// longer than the sink's own timeouts and retries (the webhook sink's are 10 s a request,
    /// 3 tries), so that their answer, not this bound, says what went wrong.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.config.delivery_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The relay, ready to [`run`](Relay::run).
    pub fn build(self) -> Relay<F::Source, K> {
        let source = self.from.__into_source(&SourceConfig {
            table: self.config.table.clone(),
            ordering: self.config.ordering,
            retain: self.config.retention.is_some(),
            listen: self.config.listen,
            lease_ttl: self.config.lease_ttl,
            parked_only: false,
            max_batch_bytes: self.config.max_batch_bytes,
        });
        Relay {
            source,
            sink: self.sink,
            config: self.config,
            failures: FailureLog::default(),
            careful: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Publishes the events of an outbox table to a [`Sink`]. Build it with [`Relay::builder`], run
/// it with [`Relay::run`]. Several relays (tasks or processes) may run against one table.
#[derive(Debug)]
pub struct Relay<S, K> {
    source: S,
    sink: K,
    config: Config,
    failures: FailureLog,
    /// A relay stopped with some of the claimed events in hand: claim one at a time until the
    /// claims are clean again, so that a crash is counted against the event it happened on.
    careful: std::sync::atomic::AtomicBool,
}

impl Relay<(), ()> {
    /// A relay from `pool`'s outbox table to `sink`, with default settings: `pool` is a
    /// `sqlx::Pool` of a database whose feature is on (`PgPool`, `MySqlPool`, `SqlitePool`).
    pub fn builder<P: IntoSource, K: Sink>(pool: P, sink: K) -> RelayBuilder<P, K> {
        Relay::with(pool, sink)
    }

    /// A relay from a [`Source`] of your own — a log, a change feed, another queue — to `sink`,
    /// with default settings. The relay brings what it brings to the outbox table: batches,
    /// the sink's waves, retries with backoff, dead letters after `max_attempts`, per-aggregate
    /// holding back, metrics and graceful shutdown; the source decides what to claim and how
    /// to record a [`Settlement`]. See [`source`] for the contract.
    ///
    /// ```
    /// use std::time::Duration;
    /// use outbox::Error;
    /// use outbox::relay::source::{Claim, Settlement, Source};
    /// use outbox::relay::{ChannelSink, Message, Relay};
    ///
    /// /// A source that never has anything: the smallest one there is.
    /// struct Empty;
    /// struct Nothing;
    ///
    /// impl Source for Empty {
    ///     type Claim = Nothing;
    ///     async fn claim(&self, _max: usize) -> Result<Option<Nothing>, Error> {
    ///         Ok(None)
    ///     }
    ///     async fn wait(&self, timeout: Duration) {
    ///         tokio::time::sleep(timeout).await
    ///     }
    ///     async fn maintain(&self, _retention: Option<Duration>) -> Result<f64, Error> {
    ///         Ok(0.0)
    ///     }
    /// }
    ///
    /// impl Claim for Nothing {
    ///     fn take_messages(&mut self) -> Vec<Message> {
    ///         Vec::new()
    ///     }
    ///     async fn settle(self, _settlement: Settlement) -> Result<(), Error> {
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let (sink, _events) = ChannelSink::new(16);
    /// let relay = Relay::from_source(Empty, sink).batch_size(100).build();
    /// # drop(relay);
    /// ```
    pub fn from_source<S: Source, K: Sink>(source: S, sink: K) -> RelayBuilder<CustomSource<S>, K> {
        Relay::with(CustomSource(source), sink)
    }

    fn with<F: IntoSource, K: Sink>(from: F, sink: K) -> RelayBuilder<F, K> {
        RelayBuilder {
            from,
            sink,
            config: Config {
                table: TableName::DEFAULT,
                listen: Outbox::DEFAULT.notifies_on_commit(),
                batch_size: 500,
                max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
                max_attempts: 10,
                backoff: Backoff::default(),
                poll_interval: Duration::from_millis(25),
                retention: None,
                ordering: Ordering::PerAggregate,
                maintenance_interval: Duration::from_secs(2),
                lease_ttl: Duration::from_secs(10),
                delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
                enrich: None,
            },
        }
    }
}

impl<S: Source, K: Sink> Relay<S, K> {
    /// Runs until `shutdown` completes, then returns after the batch in hand is settled. Errors
    /// (database down, connection cut) are logged and retried with backoff; they never stop
    /// the relay — except a server that cannot serve it at all ([`Error::Unsupported`], e.g.
    /// CockroachDB, whose outbox a changefeed publishes), found before the first claim, logged,
    /// and returned at once. To stop at once, abort the task: the batch in hand is claimed
    /// again later.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        let mut errors = 0_u32;
        let mut last_maintenance: Option<Instant> = None;
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                break;
            }
            if last_maintenance.is_none_or(|at| at.elapsed() >= self.config.maintenance_interval) {
                last_maintenance = Some(Instant::now());
                match self.source.maintain(self.config.retention).await {
                    Ok(lag) => {
                        metrics::gauge!("outbox_lag_seconds", "table" => self.table()).set(lag)
                    }
                    Err(error @ Error::Unsupported { .. }) => {
                        // Nothing a retry can change: the server cannot serve this relay.
                        tracing::error!(%error, table = %self.config.table, "outbox relay cannot run");
                        break;
                    }
                    Err(error) => tracing::warn!(%error, "outbox maintenance failed"),
                }
            }
            let started = Instant::now();
            match self.step().await {
                Ok(0) => {
                    errors = 0;
                    let pause = idle_pause(started.elapsed());
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause), if !pause.is_zero() => {}
                        () = self.source.wait(self.config.poll_interval), if pause.is_zero() => {}
                    }
                }
                Ok(_) => errors = 0,
                Err(error) => {
                    errors = errors.saturating_add(1);
                    let delay = self.config.backoff.delay(errors);
                    tracing::warn!(%error, retry_in = ?delay, "outbox relay step failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.source.close().await;
        tracing::debug!(table = %self.config.table, "outbox relay stopped");
    }

    fn table(&self) -> String {
        self.config.table.to_string()
    }

    /// Claims one batch, publishes it, settles it. Returns the number of events claimed.
    async fn step(&self) -> Result<usize, Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let careful = self.careful.load(Relaxed);
        let max = if careful { 1 } else { self.config.batch_size };
        let Some(mut claim) = self.source.claim(max).await? else {
            return Ok(0);
        };
        let mut messages = claim.take_messages();
        let claimed = messages.len();
        let stops = claim.in_hand(&messages).await?;
        if !stops.is_empty() && claimed > 1 {
            // A relay stopped with some of these in hand: one of them may be what killed it.
            // Released untouched, and claimed again one at a time.
            tracing::warn!(
                table = %self.table(),
                suspects = stops.len(),
                "a relay stopped while handling some of these events without settling them (a crash, a kill, a lost connection): handling them one at a time"
            );
            self.careful.store(true, Relaxed);
            return Ok(claimed);
        }
        if careful && stops.is_empty() {
            tracing::info!(table = %self.table(), "no event left that a relay stopped on: back to batches");
            self.careful.store(false, Relaxed);
        }
        // What killed the relay as many times as it may fail: a dead letter, untried.
        let mut fatal = Vec::new();
        messages.retain(|message| {
            let stopped = stops.get(&message.seq).copied().unwrap_or(0);
            let attempts = u32::try_from(message.attempts).unwrap_or(0).saturating_add(stopped);
            if stopped == 0 || attempts < self.config.max_attempts {
                return true;
            }
            let error = format!(
                "the relay stopped {stopped} times while handling this event, without settling it (a panic, an out-of-memory kill, a lost connection), after {} failed deliveries: a dead letter, not tried again until replayed",
                message.attempts
            );
            tracing::warn!(event_id = %message.id, event_type = %message.event_type, %error, "dead letter");
            fatal.push((message.seq, error));
            false
        });
        // The batch's own table when the source serves several, else the relay's.
        let table = claim
            .table()
            .map_or_else(|| self.table(), ToString::to_string);
        let span = tracing::debug_span!("outbox.relay.batch", table = %table, claimed);
        let mut settlement = self.publish(messages).instrument(span.clone()).await;
        settlement.dead.extend(fatal);
        let (published, retried, dead) = (
            settlement.published.len(),
            settlement.retry.len(),
            settlement.dead.len(),
        );
        claim.settle(settlement).instrument(span).await?;
        metrics::histogram!("outbox_batch_size", "table" => table.clone()).record(claimed as f64);
        metrics::counter!("outbox_events_published_total", "table" => table.clone())
            .increment(published as u64);
        metrics::counter!("outbox_events_failed_total", "table" => table.clone())
            .increment((retried + dead) as u64);
        metrics::counter!("outbox_events_dead_total", "table" => table).increment(dead as u64);
        Ok(claimed)
    }
}

/// How long a relay whose claim found nothing pauses before trying again, beyond its poll
/// interval: nothing when the claim was cheap (an empty table); when it was costly — pending
/// events it could not take because other relays hold their aggregates — long enough that such
/// fruitless claims take at most a tenth of the time, up to 2 s. Without this, relays standing
/// by over a few hot aggregates would spend the CPU the working relay needs.
fn idle_pause(claim_took: Duration) -> Duration {
    const CHEAP: Duration = Duration::from_millis(5);
    if claim_took < CHEAP {
        Duration::ZERO
    } else {
        (claim_took * 9).min(Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Mutex;

    use proptest::prelude::*;

    use super::*;

    /// A source that never has anything: the tests call `publish` directly.
    struct Nothing;
    struct NoClaim;

    impl Source for Nothing {
        type Claim = NoClaim;
        async fn claim(&self, _max: usize) -> Result<Option<NoClaim>, Error> {
            Ok(None)
        }
        async fn wait(&self, _timeout: Duration) {}
        async fn maintain(&self, _retention: Option<Duration>) -> Result<f64, Error> {
            Ok(0.0)
        }
    }

    impl Claim for NoClaim {
        fn take_messages(&mut self) -> Vec<Message> {
            Vec::new()
        }
        async fn settle(self, _settlement: Settlement) -> Result<(), Error> {
            Ok(())
        }
    }

    /// Fails the events whose `seq` it is given, and remembers each call's batch. When it keeps
    /// order, it delivers nothing of an aggregate after that aggregate's failure in a batch, as
    /// the contract of `keeps_order` says.
    struct Recorder {
        failing: HashSet<i64>,
        keeps_order: bool,
        waves: Mutex<Vec<Vec<Message>>>,
    }

    impl Sink for Recorder {
        fn publish(&self, batch: &[Message]) -> impl Future<Output = Vec<Delivery>> + Send {
            self.waves.lock().unwrap().push(batch.to_vec());
            let mut failed = HashSet::new();
            let results = batch
                .iter()
                .map(|m| {
                    let behind = self.keeps_order && failed.contains(&m.aggregate_id);
                    if behind || self.failing.contains(&m.seq) {
                        failed.insert(m.aggregate_id.clone());
                        Err(SinkError::transient("refused"))
                    } else {
                        Ok(())
                    }
                })
                .collect();
            std::future::ready(results)
        }

        fn keeps_order(&self) -> bool {
            self.keeps_order
        }
    }

    fn batch(aggregates: &[u8]) -> Vec<Message> {
        aggregates
            .iter()
            .enumerate()
            .map(|(seq, aggregate)| {
                let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                Message::new(
                    uuid::Uuid::now_v7(),
                    seq,
                    "t",
                    aggregate.to_string(),
                    "E",
                    "{}",
                )
            })
            .collect()
    }

    proptest! {
        /// Per aggregate: the events before its first failure are published, the failure is
        /// retried, the events after it are released untried; waves never hold two events of
        /// one aggregate unless the sink keeps their order, and then in order.
        #[test]
        fn waves_publish_each_aggregate_in_order_up_to_its_first_failure(
            aggregates in proptest::collection::vec(0_u8..5, 1..40),
            failing in proptest::collection::hash_set(0_i64..40, 0..8),
            keeps_order in any::<bool>(),
            unordered in any::<bool>(),
        ) {
            let ordering = if unordered { Ordering::Unordered } else { Ordering::PerAggregate };
            let sink = Recorder { failing: failing.clone(), keeps_order, waves: Mutex::default() };
            let relay = Relay::from_source(Nothing, sink).ordering(ordering).build();
            let messages = batch(&aggregates);
            // The delivery timeout needs a clock: a runtime with time.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let settlement = runtime.block_on(relay.publish(messages.clone()));

            let published: HashSet<i64> = settlement.published.iter().copied().collect();
            let retried: HashSet<i64> = settlement.retry.iter().map(|(seq, ..)| *seq).collect();
            prop_assert!(settlement.dead.is_empty(), "transient failures are retried");
            prop_assert_eq!(published.len(), settlement.published.len(), "published once");
            prop_assert!(published.is_disjoint(&retried));

            let mut by_aggregate: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
            for message in &messages {
                by_aggregate.entry(&message.aggregate_id).or_default().push(message.seq);
            }
            for seqs in by_aggregate.values() {
                if unordered {
                    // One wave: what the sink refused is retried, the rest published. A sink
                    // that keeps order refuses an aggregate's events after its first failure.
                    let first_failure = seqs.iter().position(|seq| failing.contains(seq));
                    for (i, seq) in seqs.iter().enumerate() {
                        let behind = keeps_order && first_failure.is_some_and(|first| i > first);
                        let refused = failing.contains(seq) || behind;
                        prop_assert_eq!(retried.contains(seq), refused, "seq {}", seq);
                        prop_assert_eq!(published.contains(seq), !refused, "seq {}", seq);
                    }
                    continue;
                }
                let first_failure = seqs.iter().position(|seq| failing.contains(seq));
                let delivered = first_failure.unwrap_or(seqs.len());
                for (i, seq) in seqs.iter().enumerate() {
                    prop_assert_eq!(published.contains(seq), i < delivered, "seq {}", seq);
                    prop_assert_eq!(retried.contains(seq), Some(i) == first_failure, "seq {}", seq);
                }
            }

            let waves = relay.sink.waves.lock().unwrap();
            for wave in waves.iter() {
                let mut last_of: BTreeMap<&str, i64> = BTreeMap::new();
                for message in wave {
                    if let Some(previous) = last_of.insert(&message.aggregate_id, message.seq) {
                        prop_assert!(
                            keeps_order || unordered,
                            "two events of aggregate {} in one wave", message.aggregate_id
                        );
                        prop_assert!(previous < message.seq, "out of order within a wave");
                    }
                }
            }
        }
    }
}
