//! The outbox table of a database with row locks (PostgreSQL, MySQL/MariaDB) as a relay source,
//! written once: a claim is an open transaction holding `FOR UPDATE SKIP LOCKED` locks on, for
//! each aggregate, its oldest pending event and some that follow; settling runs the database's
//! statements in that transaction and commits. The databases differ only in their statements,
//! which [`RowLocking`] gives.
//!
//! A claim finds the oldest claimable event, takes the free heads among the events that follow
//! it (a window of the table in `seq` order), then the later events of those heads, then — if
//! the batch is still not full and the database can — heads further on: those of the next
//! aggregates in key order, from where the source's last such search stopped. The window keeps
//! a claim's cost bounded when a few aggregates hold most of the pending events, or when other
//! relays hold the heads at the start of the table; the last step keeps an aggregate whose head
//! lies beyond the window from waiting behind them, and going on where it stopped gives every
//! aggregate its turn however many wait before it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::Transaction;

use super::journal::{Hands, Journal};
use super::table::{ByteBudget, LowWater};
use crate::message::Message;
use crate::relay::Ordering;
use crate::relay::source::{Claim, Settlement, Source, SourceConfig};
use crate::{Dialect, Error, TableName};

/// How many times a settlement that the database rolled back as a deadlock victim is settled
/// again before the batch is given up (and claimed again).
const SETTLE_RETRIES: u32 = 3;

/// Rows deleted per statement when published events are purged.
const PURGE_BATCH: i64 = 1000;

/// The statements of a database whose outbox table is claimed under row locks. Implemented by
/// the library for PostgreSQL and MySQL/MariaDB.
#[doc(hidden)]
pub trait RowLocking: Dialect + Journal {
    /// The statement that begins a claim's transaction.
    const BEGIN_CLAIM: &'static str;

    /// State kept for [`wait`](RowLocking::wait), e.g. a listening connection.
    type Wakeup: Default + std::fmt::Debug + Send + Sync;

    /// The claim's queries on the table `config` names.
    fn claim_statements(config: &SourceConfig) -> ClaimStatements;

    /// The `seq` of the oldest claimable event from `from_seq` on, locked or not.
    fn first_claimable<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        from_seq: i64,
    ) -> impl Future<Output = Result<Option<i64>, sqlx::Error>> + Send + 'a;

    /// Up to `limit` pending, due heads from `scan.from` on, locked, in `seq` order, within
    /// `budget`; `dense` asks for [`ClaimStatements::dense_heads`] where the database has it.
    fn claim_heads<'a>(
        conn: &'a mut Self::Connection,
        statements: &'a ClaimStatements,
        dense: bool,
        scan: Scan,
        limit: i64,
        budget: &'a mut ByteBudget,
    ) -> impl Future<Output = Result<Vec<Message>, sqlx::Error>> + Send + 'a;

    /// Up to `limit` later pending events of the aggregates of `heads`, locked, within `budget`;
    /// where the database can, those inside the window `scan` first.
    fn claim_followers<'a>(
        conn: &'a mut Self::Connection,
        statements: &'a ClaimStatements,
        heads: &'a [Message],
        scan: Scan,
        limit: i64,
        budget: &'a mut ByteBudget,
    ) -> impl Future<Output = Result<Vec<Message>, sqlx::Error>> + Send + 'a;

    /// Up to `limit` heads other than the `taken` events among those of the next `aggregates`
    /// aggregates after `after` (in key order; all from the first when it is `None`), locked,
    /// in `seq` order, within `budget`; and where the next such search goes on (`None`: the
    /// search reached the last aggregate). Run with [`ClaimStatements::beyond`] when the scan
    /// and the followers did not fill the batch.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn claim_beyond<'a>(
        conn: &'a mut Self::Connection,
        statements: &'a ClaimStatements,
        taken: &'a [i64],
        after: Option<&'a AggregateKey>,
        aggregates: i64,
        limit: i64,
        budget: &'a mut ByteBudget,
    ) -> impl Future<Output = Result<(Vec<Message>, Option<AggregateKey>), sqlx::Error>> + Send + 'a
    {
        let _ = (conn, statements, taken, after, aggregates, limit, budget);
        std::future::ready(Ok((Vec::new(), None)))
    }

    /// The settlement's statements: published rows deleted (or marked, with `retain`),
    /// failures counted and delayed, dead letters set apart. Idempotent.
    fn settle<'a>(
        conn: &'a mut Self::Connection,
        table: &'a TableName,
        retain: bool,
        settlement: &'a Settlement,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// The database rolled the transaction back to break a deadlock: settling again is safe.
    fn is_deadlock(error: &sqlx::Error) -> bool;

    /// Deletes published rows older than `retention`, `batch` per statement; how many.
    fn purge<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        retention: Duration,
        batch: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// The oldest pending event: its `seq` and its age in seconds.
    fn oldest_pending<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<Option<(i64, f64)>, sqlx::Error>> + Send + 'a;

    /// Checked once before the source's first maintenance: what makes the relay impossible
    /// on this server ([`Error::Unsupported`], which stops the relay), e.g. CockroachDB behind
    /// the PostgreSQL dialect.
    fn preflight<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        let _ = (pool, table);
        std::future::ready(Ok(()))
    }

    /// Returns when new events may have arrived (with `listen`, where the database can tell),
    /// or after `timeout`.
    fn wait<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        listen: bool,
        wakeup: &'a Self::Wakeup,
        timeout: Duration,
    ) -> impl Future<Output = ()> + Send + 'a {
        let _ = (pool, table, listen, wakeup);
        tokio::time::sleep(timeout)
    }
}

/// Where a claim looks for heads: the oldest claimable event (`from`) and how many claimable
/// events from it on (`window`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Scan {
    /// The `seq` of the oldest claimable event.
    pub from: i64,
    /// How many claimable events, from `from` on, the heads are looked for among.
    pub window: i64,
}

impl Scan {
    /// The window of a claim of `limit` events from `from`: four batches (at least 1,000
    /// events), enough for several relays' batches side by side.
    fn new(from: i64, limit: i64) -> Self {
        Scan {
            from,
            window: limit.saturating_mul(4).max(1_000),
        }
    }
}

/// An aggregate: its type and id.
#[doc(hidden)]
pub type AggregateKey = (String, String);

/// The statements of a claim, built once per source.
#[doc(hidden)]
#[derive(Debug)]
pub struct ClaimStatements {
    /// The oldest claimable event from a `seq` on (bound: the `seq`).
    pub first: String,
    /// The heads, in `seq` order from the oldest claimable event (bound by
    /// [`RowLocking::claim_heads`]).
    pub heads: String,
    /// The heads by a plain scan in `seq` order that probes every event it passes: cheaper than
    /// `heads` while most events are heads of their aggregates, far dearer when a few busy
    /// aggregates hold most of them. `None` where `heads` is the only scan.
    pub dense_heads: Option<String>,
    /// The `seq`s of the first event of each aggregate among a window of claimable events, for
    /// a database whose `heads` takes them as a parameter; `None` where `heads` finds them.
    pub window_candidates: Option<String>,
    /// The later events of claimed heads (bound by [`RowLocking::claim_followers`]).
    pub followers: String,
    /// The heads of the next aggregates in key order, anywhere in the table, for when the
    /// heads near the start of the scan are few and all taken, e.g. by other relays (bound by
    /// [`RowLocking::claim_beyond`]); `None` where the scan alone finds every head.
    pub beyond: Option<String>,
    /// Locks the heads `beyond` found.
    pub beyond_lock: Option<String>,
    /// The later events of claimed heads among the window's events (bound by
    /// [`RowLocking::claim_followers`]), taken before `followers`; `None` where the database
    /// reads followers by `followers` only.
    pub window_followers: Option<String>,
    /// The columns of events the statements above locked, by `seq` (bound: the `seq`s), in
    /// `seq` order, for a database whose lock statements return large events by size only;
    /// `None` where they return every event whole.
    pub read: Option<String>,
}

/// The outbox table of a database with row locks, as a relay [`Source`]: what
/// `Relay::builder(pool, sink).build()` reads from on PostgreSQL
/// ([`PgSource`](super::postgres::PgSource)) and MySQL/MariaDB
/// ([`MySqlSource`](super::mysql::MySqlSource)).
#[derive(Debug)]
pub struct TableSource<DB: RowLocking> {
    pool: sqlx::Pool<DB>,
    table: TableName,
    ordering: Ordering,
    retain: bool,
    listen: bool,
    low_water: LowWater,
    /// The last claims found fewer heads than they asked for: claim with the window scan until
    /// one fills its batch with heads again.
    sparse: AtomicBool,
    /// Where the last search for heads beyond the window stopped (in aggregate key order): the
    /// next one goes on from there, so that every aggregate's turn comes. `None`: from the first.
    beyond_after: Mutex<Option<AggregateKey>>,
    wakeup: DB::Wakeup,
    statements: Arc<ClaimStatements>,
    max_batch_bytes: usize,
    /// [`RowLocking::preflight`] passed.
    checked: AtomicBool,
    /// This relay's notes in the relays' journal.
    hands: Arc<Hands>,
}

impl<DB: RowLocking> TableSource<DB> {
    pub(crate) fn new(pool: sqlx::Pool<DB>, config: &SourceConfig) -> Self {
        TableSource {
            pool,
            table: config.table.clone(),
            ordering: config.ordering,
            retain: config.retain,
            listen: config.listen,
            low_water: LowWater::default(),
            sparse: AtomicBool::new(false),
            beyond_after: Mutex::default(),
            wakeup: DB::Wakeup::default(),
            statements: Arc::new(DB::claim_statements(config)),
            max_batch_bytes: config.max_batch_bytes,
            checked: AtomicBool::new(false),
            hands: Arc::new(Hands::new(&config.table)),
        }
    }

    fn beyond_after(&self) -> MutexGuard<'_, Option<AggregateKey>> {
        self.beyond_after
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn database_error(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |source| Error::database(operation, &self.table, DB::NAME, source)
    }

    async fn claim_in(
        &self,
        conn: &mut DB::Connection,
        max: usize,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let statements = &*self.statements;
        let Some(from) = DB::first_claimable(conn, &statements.first, self.low_water.get()).await?
        else {
            return Ok(Vec::new());
        };
        self.low_water.raise(from);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let scan = Scan::new(from, limit);
        let mut budget = ByteBudget::new(self.max_batch_bytes);
        let dense = statements.dense_heads.is_some() && !self.sparse.load(AtomicOrdering::Relaxed);
        let mut messages =
            DB::claim_heads(conn, statements, dense, scan, limit, &mut budget).await?;
        if !budget.is_full() {
            // Heads are scarce when the batch could not fill with them: the window scan probes
            // one event per aggregate, the plain scan one per event.
            self.sparse
                .store(messages.len() < max, AtomicOrdering::Relaxed);
        }
        if self.ordering != Ordering::PerAggregate {
            return Ok(messages);
        }
        let room = |messages: &Vec<Message>| {
            i64::try_from(max.saturating_sub(messages.len())).unwrap_or(i64::MAX)
        };
        if room(&messages) > 0 && !messages.is_empty() && !budget.is_full() {
            // Later events of aggregates whose head this claim holds: nobody else can claim them.
            let followers = DB::claim_followers(
                conn,
                statements,
                &messages,
                scan,
                room(&messages),
                &mut budget,
            )
            .await?;
            messages.extend(followers);
        }
        if statements.beyond.is_some() && room(&messages) > 0 && !budget.is_full() {
            // The scan's window held too few free heads (a few busy aggregates, or heads other
            // relays hold): the heads of the next aggregates in key order, as many as the batch
            // has room for twice over, from where the last such search stopped.
            let taken: Vec<i64> = messages.iter().map(|m| m.seq).collect();
            let after = self.beyond_after().clone();
            let aggregates = room(&messages).saturating_mul(2).max(100);
            let (more, next) = DB::claim_beyond(
                conn,
                statements,
                &taken,
                after.as_ref(),
                aggregates,
                room(&messages),
                &mut budget,
            )
            .await?;
            *self.beyond_after() = next;
            messages.extend(more);
        }
        messages.sort_by_key(|m| m.seq);
        Ok(messages)
    }
}

impl<DB: RowLocking> Source for TableSource<DB> {
    type Claim = TableClaim<DB>;

    async fn claim(&self, max: usize) -> Result<Option<TableClaim<DB>>, Error> {
        let mut tx = crate::transaction::begin(&self.pool, Some(DB::BEGIN_CLAIM))
            .await
            .map_err(self.database_error("claim"))?;
        let messages = match self.claim_in(&mut tx, max).await {
            Ok(messages) => messages,
            Err(error) => {
                // Nothing was published: the claim is simply tried again after a backoff.
                if DB::is_deadlock(&error) {
                    count_deadlock(&self.table, "claim");
                }
                return Err(self.database_error("claim")(error));
            }
        };
        if messages.is_empty() {
            // Nothing locked; ending the transaction now returns the connection at once.
            tx.rollback().await.map_err(self.database_error("claim"))?;
            return Ok(None);
        }
        Ok(Some(TableClaim {
            pool: self.pool.clone(),
            tx,
            messages,
            table: self.table.clone(),
            retain: self.retain,
            hands: Arc::clone(&self.hands),
        }))
    }

    async fn wait(&self, timeout: Duration) {
        DB::wait(&self.pool, &self.table, self.listen, &self.wakeup, timeout).await;
    }

    async fn maintain(&self, retention: Option<Duration>) -> Result<f64, Error> {
        if !self.checked.load(AtomicOrdering::Relaxed) {
            DB::preflight(&self.pool, &self.table).await?;
            self.checked.store(true, AtomicOrdering::Relaxed);
        }
        self.hands.sweep(&self.pool).await?;
        if let Some(retention) = retention {
            let purged = DB::purge(&self.pool, &self.table, retention, PURGE_BATCH)
                .await
                .map_err(self.database_error("purge"))?;
            if purged > 0 {
                tracing::debug!(purged, table = %self.table, "purged published events");
            }
        }
        let oldest = DB::oldest_pending(&self.pool, &self.table)
            .await
            .map_err(self.database_error("lag"))?;
        Ok(match oldest {
            Some((seq, lag)) => {
                self.low_water.reset(seq);
                lag
            }
            None => 0.0,
        })
    }

    async fn close(&self) {
        self.hands.forget(&self.pool).await;
    }
}

/// A claimed batch of a [`TableSource`]: its rows are locked by this open transaction until it
/// settles.
#[derive(Debug)]
pub struct TableClaim<DB: RowLocking> {
    pool: sqlx::Pool<DB>,
    tx: Transaction<'static, DB>,
    messages: Vec<Message>,
    table: TableName,
    retain: bool,
    hands: Arc<Hands>,
}

impl<DB: RowLocking> Claim for TableClaim<DB> {
    fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    async fn in_hand(
        &mut self,
        messages: &[Message],
    ) -> Result<std::collections::HashMap<i64, u32>, Error> {
        self.hands.note(&self.pool, messages).await
    }

    async fn settle(self, settlement: Settlement) -> Result<(), Error> {
        let TableClaim {
            pool,
            mut tx,
            table,
            retain,
            ..
        } = self;
        let mut outcome = match DB::settle(&mut tx, &table, retain, &settlement).await {
            Ok(()) => tx.commit().await,
            Err(error) => Err(error),
        };
        // A deadlock with another relay's claim or settlement rolls this transaction back, but
        // the batch is published already: settle it again in a transaction of its own rather
        // than let it be claimed and published once more. The statements are idempotent.
        let mut tries = 0;
        while let Err(error) = &outcome {
            if !DB::is_deadlock(error) {
                break;
            }
            count_deadlock(&table, "settle");
            if tries == SETTLE_RETRIES {
                break;
            }
            tries += 1;
            tracing::debug!(table = %table, tries, "settlement deadlocked; settling again");
            outcome = async {
                // In the claim's isolation (MySQL: READ COMMITTED, no gap locks).
                let mut tx = crate::transaction::begin(&pool, Some(DB::BEGIN_CLAIM)).await?;
                DB::settle(&mut tx, &table, retain, &settlement).await?;
                tx.commit().await
            }
            .await;
        }
        outcome.map_err(|source| Error::database("settle", &table, DB::NAME, source))?;
        Ok(())
    }
}

/// Counts a deadlock the database broke by rolling back this relay's `operation` (`claim` or
/// `settle`): `outbox_deadlocks_total`. Several relays on one table should not deadlock each
/// other; a count that grows says they do.
fn count_deadlock(table: &TableName, operation: &'static str) {
    tracing::debug!(%table, operation, "deadlock with another transaction");
    metrics::counter!(
        "outbox_deadlocks_total",
        "table" => table.to_string(),
        "operation" => operation
    )
    .increment(1);
}
