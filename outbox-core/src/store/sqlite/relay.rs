//! The relay's side of the SQLite outbox. SQLite has one writer at a time and no row locks, so
//! relays do not share the work: they take turns. A lease row (`<table>_lease`) names the one
//! relay that may claim; it renews the lease as it works and releases it when it stops. Others
//! stand by and take over when the lease is released or expires (a crashed relay). Claims are
//! plain reads; each settlement is one short write transaction that first checks the lease is
//! still held, so a relay that lost it cannot settle what its successor now owns.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::{AssertSqlSafe, Sqlite, SqlitePool};

use crate::message::Message;
use crate::relay::Ordering;
use crate::relay::source::{Claim, Settlement, Source, SourceConfig};
use crate::store::journal::Hands;
use crate::store::table::{self, MessageRow, deferred, delete_in_batches, pending, seq_list};
use crate::{Error, TableName};

const DIALECT: &str = <Sqlite as sqlx::Database>::NAME;

/// The timestamp format of the table's columns: ISO 8601, UTC, milliseconds.
pub(super) const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// The columns of a [`MessageRow`], from a table aliased `o`.
pub(super) const COLUMNS: &str =
    "o.seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, o.payload, o.headers, o.attempts";

/// A table beside the outbox table, in its schema: `<table><suffix>`, quoted.
pub(crate) fn companion(table: &TableName, suffix: &str) -> String {
    table.companion(suffix, '"')
}

/// SQL run by `migrate`: the index behind per-aggregate order, the dead letters' index (which
/// holds only them: recording never touches it) and the lease table.
pub(crate) fn relay_ddl(table: &TableName) -> String {
    let name = table.parts().1;
    format!(
        "CREATE INDEX IF NOT EXISTS {index} ON \"{name}\" (aggregate_type, aggregate_id, seq);
         CREATE INDEX IF NOT EXISTS {dead} ON \"{name}\" (seq) WHERE dead_at IS NOT NULL;
         CREATE INDEX IF NOT EXISTS {scheduled} ON \"{name}\" (id) WHERE scheduled;
         CREATE TABLE IF NOT EXISTS {lease} (
             name       TEXT    PRIMARY KEY,
             holder     TEXT    NOT NULL,
             expires_at INTEGER NOT NULL
         );",
        index = companion(table, "_aggregate_idx"),
        dead = companion(table, "_dead_idx"),
        scheduled = companion(table, "_scheduled_idx"),
        lease = companion(table, "_lease"),
    )
}

/// Milliseconds since the Unix epoch: the lease's clock, shared by the processes of one machine.
pub(super) fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A delay as an SQLite date modifier.
fn modifier(sign: char, duration: Duration) -> String {
    format!("{sign}{:.3} seconds", duration.as_secs_f64())
}

/// The outbox table of an SQLite database, as a relay [`Source`]: what
/// `Relay::builder(sqlite_pool, sink).build()` reads from.
#[derive(Debug)]
pub struct SqliteSource {
    pool: SqlitePool,
    table: TableName,
    retain: bool,
    /// This relay's name in the lease.
    holder: String,
    lease_ttl: Duration,
    /// When this relay last took or renewed the lease.
    renewed: Mutex<Option<Instant>>,
    claim: String,
    acquire: String,
    renew: String,
    max_batch_bytes: usize,
    /// This relay's notes in the relays' journal.
    hands: Arc<Hands>,
}

impl SqliteSource {
    pub(super) fn new(pool: SqlitePool, config: &SourceConfig) -> Self {
        let table = config.table.clone();
        let t = table.quoted('"');
        let lease = companion(&table, "_lease");
        // One reader, so no locks: for each aggregate, its pending events from the oldest on,
        // stopping before one that waits for a retry. An event deferred until later (never
        // tried, not due) holds nothing back: it takes no part in the order until it is due.
        let held_back = match config.ordering {
            Ordering::PerAggregate => format!(
                "AND NOT EXISTS (SELECT 1 FROM {t} e WHERE e.aggregate_type = o.aggregate_type \
                 AND e.aggregate_id = o.aggregate_id AND e.seq < o.seq \
                 AND {} AND e.attempts > 0 AND e.available_at > {NOW})",
                pending("e")
            ),
            Ordering::Unordered => String::new(),
        };
        let pending = pending("o");
        let claim = format!(
            "SELECT {COLUMNS} FROM {t} o WHERE {pending} AND o.available_at <= {NOW} {held_back} \
             ORDER BY o.seq LIMIT ?1"
        );
        let acquire = format!(
            "INSERT INTO {lease} (name, holder, expires_at) VALUES ('relay', ?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE {lease}.holder = excluded.holder OR {lease}.expires_at < ?3"
        );
        let renew =
            format!("UPDATE {lease} SET expires_at = ?2 WHERE name = 'relay' AND holder = ?1");
        SqliteSource {
            pool,
            retain: config.retain,
            holder: uuid::Uuid::now_v7().to_string(),
            lease_ttl: config.lease_ttl,
            renewed: Mutex::new(None),
            claim,
            acquire,
            renew,
            max_batch_bytes: config.max_batch_bytes,
            hands: Arc::new(Hands::new(&config.table)),
            table,
        }
    }

    fn database_error(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |source| Error::database(operation, &self.table, DIALECT, source)
    }

    fn renewed_at(&self) -> Option<Instant> {
        *self
            .renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_renewed(&self, at: Option<Instant>) {
        *self
            .renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = at;
    }

    /// True when this relay holds the lease for at least two thirds of its term: takes or renews
    /// it when a third has passed.
    async fn hold_lease(&self) -> Result<bool, sqlx::Error> {
        if self
            .renewed_at()
            .is_some_and(|at| at.elapsed() < self.lease_ttl / 3)
        {
            return Ok(true);
        }
        let started = Instant::now();
        let now = now_ms();
        let taken = sqlx::query(AssertSqlSafe(self.acquire.as_str()))
            .bind(&self.holder)
            .bind(now.saturating_add(millis(self.lease_ttl)))
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1;
        if taken && self.renewed_at().is_none() {
            tracing::debug!(table = %self.table, holder = %self.holder, "took the relay lease");
        }
        self.set_renewed(taken.then_some(started));
        Ok(taken)
    }
}

impl Source for SqliteSource {
    type Claim = SqliteClaim;

    async fn claim(&self, max: usize) -> Result<Option<SqliteClaim>, Error> {
        if !self
            .hold_lease()
            .await
            .map_err(self.database_error("lease"))?
        {
            return Ok(None); // another relay holds it: stand by
        }
        let rows = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(self.claim.as_str()))
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch(&self.pool);
        let mut budget = table::ByteBudget::new(self.max_batch_bytes);
        let messages = table::messages_within(rows, &mut budget)
            .await
            .map_err(self.database_error("claim"))?;
        if messages.is_empty() {
            return Ok(None);
        }
        Ok(Some(SqliteClaim {
            pool: self.pool.clone(),
            messages,
            table: self.table.clone(),
            retain: self.retain,
            holder: self.holder.clone(),
            renew: self.renew.clone(),
            lease_ttl: self.lease_ttl,
            hands: Arc::clone(&self.hands),
        }))
    }

    async fn wait(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }

    async fn maintain(&self, retention: Option<Duration>) -> Result<f64, Error> {
        self.hands.sweep(&self.pool).await?;
        if let Some(retention) = retention {
            let purged = purge(&self.pool, &self.table, retention, 1000)
                .await
                .map_err(self.database_error("purge"))?;
            if purged > 0 {
                tracing::debug!(purged, table = %self.table, "purged published events");
            }
        }
        // The oldest event due, from when it was due: an event deferred until later is no lag.
        let sql = format!(
            "SELECT (julianday('now') - julianday(CASE WHEN o.attempts = 0 \
               THEN max(o.created_at, o.available_at) ELSE o.created_at END)) * 86400.0 FROM {} o \
             WHERE {} AND NOT {} ORDER BY seq LIMIT 1",
            self.table.quoted('"'),
            pending("o"),
            deferred("o", NOW),
        );
        let lag: Option<f64> = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_optional(&self.pool)
            .await
            .map_err(self.database_error("lag"))?;
        Ok(lag.unwrap_or(0.0))
    }

    async fn close(&self) {
        self.hands.forget(&self.pool).await;
        if self.renewed_at().is_none() {
            return;
        }
        let release = sqlx::query(AssertSqlSafe(self.renew.as_str()))
            .bind(&self.holder)
            .bind(0_i64)
            .execute(&self.pool)
            .await;
        if let Err(error) = release {
            tracing::debug!(%error, "releasing the relay lease failed; it will expire");
        }
        self.set_renewed(None);
    }
}

/// A claimed SQLite batch: read under the lease, settled in one write transaction.
#[derive(Debug)]
pub struct SqliteClaim {
    pool: SqlitePool,
    messages: Vec<Message>,
    table: TableName,
    retain: bool,
    holder: String,
    renew: String,
    lease_ttl: Duration,
    hands: Arc<Hands>,
}

impl Claim for SqliteClaim {
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
        let wrap = |source| Error::database("settle", &self.table, DIALECT, source);
        let t = self.table.quoted('"');
        let mut tx = crate::transaction::begin(&self.pool, None)
            .await
            .map_err(wrap)?;
        let held = sqlx::query(AssertSqlSafe(self.renew.as_str()))
            .bind(&self.holder)
            .bind(now_ms().saturating_add(millis(self.lease_ttl)))
            .execute(&mut *tx)
            .await
            .map_err(wrap)?
            .rows_affected()
            == 1;
        if !held {
            // Another relay took over while this batch was out: it owns these events now and
            // publishes them again.
            return Err(Error::LeaseLost {
                table: self.table.to_string(),
            });
        }
        if !settlement.published.is_empty() {
            let seqs = seq_list(settlement.published.iter().copied());
            let sql = if self.retain {
                format!("UPDATE {t} SET published_at = {NOW} WHERE seq IN ({seqs})")
            } else {
                format!("DELETE FROM {t} WHERE seq IN ({seqs})")
            };
            sqlx::query(AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(wrap)?;
        }
        let retry = format!(
            "UPDATE {t} SET attempts = attempts + 1, last_error = ?1, \
             available_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2) WHERE seq = ?3"
        );
        for (seq, error, delay) in settlement.retry {
            sqlx::query(AssertSqlSafe(retry.as_str()))
                .bind(error)
                .bind(modifier('+', delay))
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(wrap)?;
        }
        let dead = format!(
            "UPDATE {t} SET attempts = attempts + 1, last_error = ?1, dead_at = {NOW} WHERE seq = ?2"
        );
        for (seq, error) in settlement.dead {
            sqlx::query(AssertSqlSafe(dead.as_str()))
                .bind(error)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(wrap)?;
        }
        tx.commit().await.map_err(wrap)
    }
}

/// Deletes published rows older than `retention`, at most `batch` per statement; returns how
/// many went.
async fn purge(
    pool: &SqlitePool,
    table: &TableName,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let t = table.quoted('"');
    let sql = format!(
        "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} \
         WHERE published_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) ORDER BY seq LIMIT ?2)"
    );
    delete_in_batches(batch, || async {
        Ok(sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(modifier('-', retention))
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected())
    })
    .await
}

impl crate::relay::source::RelaySql for Sqlite {
    type Source = SqliteSource;

    fn __source(pool: SqlitePool, config: &SourceConfig) -> SqliteSource {
        SqliteSource::new(pool, config)
    }

    async fn __discover(
        pool: &SqlitePool,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Vec<(Option<String>, String)>, sqlx::Error> {
        if schema.is_some() {
            // Attached databases are not searched: one file, one set of tables.
            return Ok(Vec::new());
        }
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT m.name FROM sqlite_master m WHERE m.type = 'table' AND m.name LIKE ?1 ESCAPE '\\' \
               AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) c WHERE c.name = 'available_at') \
               AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) c WHERE c.name = 'aggregate_type') \
             ORDER BY 1",
        )
        .bind(name)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(|table| (None, table)).collect())
    }
}
