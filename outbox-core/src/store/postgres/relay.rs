//! The relay's side of the PostgreSQL outbox: claiming with `FOR UPDATE SKIP LOCKED`, settling,
//! waking on `NOTIFY`, dead letters.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgRow};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row, Transaction};
use tokio::sync::Mutex;

use crate::relay::source::{
    Claim, FilterValue, LowWater, PENDING, Settlement, Source, dead_letter, dead_letter_conditions,
    head_condition,
};
use crate::relay::{DeadLetter, DeadLetterFilter, Message, Ordering, SourceConfig};
use crate::{Error, TableName};

const DIALECT: &str = <sqlx::PgConnection as crate::OutboxConnection>::DIALECT;

/// The notification channel of a table: fed by the trigger `migrate` installs.
pub(crate) fn channel(table: &TableName) -> String {
    format!("outbox_{}", table.as_str().replace('.', "_"))
}

/// SQL run by `migrate`: the index behind per-aggregate order, and the `NOTIFY` trigger when
/// asked for (removed otherwise).
pub(crate) fn relay_ddl(table: &TableName, notify: bool) -> String {
    let quoted = table.quoted('"');
    let (schema, name) = table.parts();
    let prefix = schema.map(|s| format!("\"{s}\".")).unwrap_or_default();
    let index = format!(
        "CREATE INDEX IF NOT EXISTS \"{name}_aggregate_idx\" ON {quoted} (aggregate_type, aggregate_id, seq);"
    );
    if !notify {
        return format!("{index} DROP TRIGGER IF EXISTS \"{name}_notify\" ON {quoted};");
    }
    let channel = channel(table);
    format!(
        "{index}
         CREATE OR REPLACE FUNCTION {prefix}\"{name}_notify\"() RETURNS trigger LANGUAGE plpgsql AS $outbox$
         BEGIN PERFORM pg_notify('{channel}', ''); RETURN NULL; END $outbox$;
         DROP TRIGGER IF EXISTS \"{name}_notify\" ON {quoted};
         CREATE TRIGGER \"{name}_notify\" AFTER INSERT ON {quoted}
           FOR EACH STATEMENT EXECUTE FUNCTION {prefix}\"{name}_notify\"();"
    )
}

/// The columns of a [`Message`], from a table aliased `o`.
const COLUMNS: &str = "o.seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, o.payload::text AS payload, \
                       o.headers::text AS headers, o.attempts";

fn message(row: &PgRow) -> Result<Message, sqlx::Error> {
    Ok(Message {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        headers: row.try_get("headers")?,
        attempts: row.try_get("attempts")?,
    })
}

/// The outbox table of a PostgreSQL database, as a relay [`Source`]: what
/// `Relay::builder(pg_pool, sink).build()` reads from.
#[derive(Debug)]
pub struct PgSource {
    pool: PgPool,
    table: TableName,
    ordering: Ordering,
    retain: bool,
    listen: bool,
    low_water: LowWater,
    listener: Mutex<Option<PgListener>>,
    claim_heads: Arc<str>,
    claim_followers: Arc<str>,
}

impl PgSource {
    pub(crate) fn new(pool: PgPool, config: &SourceConfig) -> Self {
        let (table, ordering) = (config.table.clone(), config.ordering);
        let t = table.quoted('"');
        let head = head_condition(&t, ordering);
        let claim_heads = format!(
            "SELECT {COLUMNS} FROM {t} o WHERE o.seq >= $2 AND {PENDING} AND o.available_at <= clock_timestamp() {head} \
             ORDER BY o.seq LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        // Later events of aggregates whose head this claim holds: nobody else can claim them.
        let claim_followers = format!(
            "SELECT {COLUMNS} FROM {t} o \
             JOIN unnest($1::text[], $2::text[], $3::int8[]) AS h(aggregate_type, aggregate_id, seq) \
               ON o.aggregate_type = h.aggregate_type AND o.aggregate_id = h.aggregate_id AND o.seq > h.seq \
             WHERE {PENDING} ORDER BY o.seq LIMIT $4 FOR UPDATE OF o"
        );
        PgSource {
            pool,
            table,
            ordering,
            retain: config.retain,
            listen: config.listen,
            low_water: LowWater::default(),
            listener: Mutex::new(None),
            claim_heads: claim_heads.into(),
            claim_followers: claim_followers.into(),
        }
    }

    fn database_error(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |source| Error::database(operation, &self.table, DIALECT, source)
    }

    async fn claim_in(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        max: usize,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = sqlx::query(AssertSqlSafe(self.claim_heads.clone()))
            .bind(limit)
            .bind(self.low_water.get())
            .fetch_all(&mut **tx)
            .await?;
        let mut messages = rows.iter().map(message).collect::<Result<Vec<_>, _>>()?;
        let room = max.saturating_sub(messages.len());
        if self.ordering == Ordering::PerAggregate && room > 0 && !messages.is_empty() {
            let (types, (ids, seqs)): (Vec<_>, (Vec<_>, Vec<_>)) = messages
                .iter()
                .map(|m| (m.aggregate_type.clone(), (m.aggregate_id.clone(), m.seq)))
                .unzip();
            let rows = sqlx::query(AssertSqlSafe(self.claim_followers.clone()))
                .bind(types)
                .bind(ids)
                .bind(seqs)
                .bind(i64::try_from(room).unwrap_or(i64::MAX))
                .fetch_all(&mut **tx)
                .await?;
            for row in &rows {
                messages.push(message(row)?);
            }
            messages.sort_by_key(|m| m.seq);
        }
        Ok(messages)
    }
}

impl Source for PgSource {
    type Claim = PgClaim;

    async fn claim(&self, max: usize) -> Result<Option<PgClaim>, Error> {
        // The claim's commit need not wait for the disk: a settlement lost in a database crash
        // only means its events are published again, which at-least-once allows. Waiting for
        // the flush would put an fsync in every batch's latency.
        let mut tx = self
            .pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
            .await
            .map_err(self.database_error("claim"))?;
        let messages = self
            .claim_in(&mut tx, max)
            .await
            .map_err(self.database_error("claim"))?;
        if messages.is_empty() {
            // Nothing locked; ending the transaction now returns the connection at once.
            tx.rollback().await.map_err(self.database_error("claim"))?;
            return Ok(None);
        }
        let seqs = messages.iter().map(|m| m.seq).collect();
        Ok(Some(PgClaim {
            tx,
            messages,
            seqs,
            low_water: self.low_water.clone(),
            table: self.table.clone(),
            retain: self.retain,
        }))
    }

    async fn wait(&self, timeout: Duration) {
        if !self.listen {
            tokio::time::sleep(timeout).await;
            return;
        }
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => match listener.listen(&channel(&self.table)).await {
                    Ok(()) => *guard = Some(listener),
                    Err(error) => tracing::debug!(%error, "LISTEN failed; polling"),
                },
                Err(error) => tracing::debug!(%error, "no listener connection; polling"),
            }
        }
        match guard.as_mut() {
            Some(listener) => {
                if let Ok(Err(error)) = tokio::time::timeout(timeout, listener.recv()).await {
                    tracing::debug!(%error, "listener lost; polling until it reconnects");
                    *guard = None;
                    drop(guard);
                    tokio::time::sleep(timeout).await;
                }
            }
            None => {
                drop(guard);
                tokio::time::sleep(timeout).await;
            }
        }
    }

    async fn maintain(&self, retention: Option<Duration>) -> Result<f64, Error> {
        if let Some(retention) = retention {
            let purged = purge(&self.pool, &self.table, retention, 1000)
                .await
                .map_err(self.database_error("purge"))?;
            if purged > 0 {
                tracing::debug!(purged, table = %self.table, "purged published events");
            }
        }
        let oldest = oldest_pending(&self.pool, &self.table)
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
}

/// A claimed PostgreSQL batch: the rows are locked by this open transaction until it settles.
#[derive(Debug)]
pub struct PgClaim {
    tx: Transaction<'static, Postgres>,
    messages: Vec<Message>,
    /// The claimed `seq`s, in order.
    seqs: Vec<i64>,
    low_water: LowWater,
    table: TableName,
    retain: bool,
}

impl Claim for PgClaim {
    fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    async fn settle(mut self, settlement: Settlement) -> Result<(), Error> {
        let table = self.table.clone();
        let wrap = |source| Error::database("settle", &table, DIALECT, source);
        let t = self.table.quoted('"');
        let next = LowWater::after(&self.seqs, &settlement);
        if !settlement.published.is_empty() {
            let sql = if self.retain {
                format!("UPDATE {t} SET published_at = clock_timestamp() WHERE seq = ANY($1)")
            } else {
                format!("DELETE FROM {t} WHERE seq = ANY($1)")
            };
            sqlx::query(AssertSqlSafe(sql))
                .bind(&settlement.published)
                .execute(&mut *self.tx)
                .await
                .map_err(wrap)?;
        }
        if !settlement.retry.is_empty() {
            let (seqs, (errors, delays)): (Vec<i64>, (Vec<String>, Vec<f64>)) = settlement
                .retry
                .into_iter()
                .map(|(seq, error, delay)| (seq, (error, delay.as_secs_f64())))
                .unzip();
            let sql = format!(
                "UPDATE {t} o SET attempts = o.attempts + 1, last_error = r.error, \
                 available_at = clock_timestamp() + r.delay * interval '1 second' \
                 FROM unnest($1::int8[], $2::text[], $3::float8[]) AS r(seq, error, delay) WHERE o.seq = r.seq"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(seqs)
                .bind(errors)
                .bind(delays)
                .execute(&mut *self.tx)
                .await
                .map_err(wrap)?;
        }
        if !settlement.dead.is_empty() {
            let (seqs, errors): (Vec<i64>, Vec<String>) = settlement.dead.into_iter().unzip();
            let sql = format!(
                "UPDATE {t} o SET attempts = o.attempts + 1, last_error = r.error, dead_at = clock_timestamp() \
                 FROM unnest($1::int8[], $2::text[]) AS r(seq, error) WHERE o.seq = r.seq"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(seqs)
                .bind(errors)
                .execute(&mut *self.tx)
                .await
                .map_err(wrap)?;
        }
        self.tx.commit().await.map_err(wrap)?;
        self.low_water.advance(next);
        Ok(())
    }
}

/// The dead letters of `table` that `filter` selects, oldest first.
pub(crate) async fn dead_letters(
    pool: &PgPool,
    table: &TableName,
    filter: &DeadLetterFilter,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let (conditions, values) = filtered(filter);
    let sql = format!(
        "SELECT {COLUMNS}, o.last_error, EXTRACT(EPOCH FROM clock_timestamp() - o.dead_at)::float8 AS dead_secs FROM {} o \
         WHERE o.dead_at IS NOT NULL{conditions} ORDER BY o.seq LIMIT ${}",
        table.quoted('"'),
        values.len() + 1,
    );
    let rows = bind(sqlx::query(AssertSqlSafe(sql)), values)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| dead_letter(row, message(row)?))
        .collect()
}

/// How many dead letters of `table` `filter` selects.
pub(crate) async fn count_dead_letters(
    pool: &PgPool,
    table: &TableName,
    filter: &DeadLetterFilter,
) -> Result<u64, sqlx::Error> {
    let (conditions, values) = filtered(filter);
    let sql = format!(
        "SELECT count(*) AS dead FROM {} o WHERE o.dead_at IS NOT NULL{conditions}",
        table.quoted('"')
    );
    let row = bind(sqlx::query(AssertSqlSafe(sql)), values)
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(row.try_get::<i64, _>("dead")?).unwrap_or(0))
}

/// The dead-letter filter's conditions in this dialect.
fn filtered(filter: &DeadLetterFilter) -> (String, Vec<FilterValue<'_>>) {
    dead_letter_conditions(
        filter,
        |n| format!("${n}"),
        |p| format!("o.dead_at <= clock_timestamp() - make_interval(secs => {p})"),
    )
}

/// Binds the filter's values, in the order of their placeholders.
fn bind<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    values: Vec<FilterValue<'q>>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for value in values {
        query = match value {
            FilterValue::Text(text) => query.bind(text),
            FilterValue::Id(id) => query.bind(id),
            FilterValue::Age(age) => query.bind(age.as_secs_f64()),
        };
    }
    query
}

/// Makes dead letters deliverable again, attempts reset. `ids`: `None` for all.
pub(crate) async fn replay(
    pool: &PgPool,
    table: &TableName,
    ids: Option<&[uuid::Uuid]>,
) -> Result<u64, sqlx::Error> {
    let t = table.quoted('"');
    let done = match ids {
        Some(ids) => {
            let sql = format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, available_at = clock_timestamp() \
                 WHERE dead_at IS NOT NULL AND id = ANY($1)"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(ids)
                .execute(pool)
                .await?
        }
        None => {
            let sql = format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, available_at = clock_timestamp() WHERE dead_at IS NOT NULL"
            );
            sqlx::query(AssertSqlSafe(sql)).execute(pool).await?
        }
    };
    Ok(done.rows_affected())
}

/// Deletes published rows older than `retention`, at most `batch` per statement; returns how
/// many went.
pub(crate) async fn purge(
    pool: &PgPool,
    table: &TableName,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let t = table.quoted('"');
    let sql = format!(
        "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE published_at < clock_timestamp() - $1 * interval '1 second' \
         ORDER BY seq LIMIT $2)"
    );
    crate::relay::source::delete_in_batches(batch, || async {
        Ok(sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(retention.as_secs_f64())
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected())
    })
    .await
}

/// The oldest pending event: its `seq` and its age in seconds.
pub(crate) async fn oldest_pending(
    pool: &PgPool,
    table: &TableName,
) -> Result<Option<(i64, f64)>, sqlx::Error> {
    let sql = format!(
        "SELECT seq, extract(epoch FROM clock_timestamp() - created_at)::float8 FROM {} \
         WHERE dead_at IS NULL AND published_at IS NULL ORDER BY seq LIMIT 1",
        table.quoted('"')
    );
    sqlx::query_as(AssertSqlSafe(sql))
        .fetch_optional(pool)
        .await
}
