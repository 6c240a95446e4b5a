//! The relay's side of the MySQL/MariaDB outbox: claiming with `FOR UPDATE SKIP LOCKED` (MySQL 8,
//! MariaDB 10.6+) in `READ COMMITTED` transactions, settling, dead letters. MySQL has no
//! `NOTIFY`: the relay polls, back to back while there is work.

use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::MySqlRow;
use sqlx::{AssertSqlSafe, MySql, MySqlPool, Row, Transaction};

use crate::relay::source::{
    Claim, FilterValue, LowWater, PENDING, Settlement, Source, dead_letter, dead_letter_conditions,
    head_condition, seq_list,
};
use crate::relay::{DeadLetter, DeadLetterFilter, Message, Ordering, SourceConfig};
use crate::{Error, TableName};

const DIALECT: &str = <sqlx::MySqlConnection as crate::OutboxConnection>::DIALECT;

/// The columns of a [`Message`], from a table aliased `o`, in types sqlx decodes on both MySQL
/// and MariaDB (`seq` is unsigned, `JSON` is binary on MySQL).
const COLUMNS: &str = "CAST(o.seq AS SIGNED) AS seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, \
                       CAST(o.payload AS CHAR) AS payload, CAST(o.headers AS CHAR) AS headers, o.attempts";

/// The name of the index behind per-aggregate order.
pub(crate) fn aggregate_index(table: &TableName) -> String {
    format!("{}_aggregate_idx", table.parts().1)
}

fn message(row: &MySqlRow) -> Result<Message, sqlx::Error> {
    let id: String = row.try_get("id")?;
    Ok(Message {
        seq: row.try_get("seq")?,
        id: id.parse().map_err(|error| sqlx::Error::ColumnDecode {
            index: "id".to_owned(),
            source: Box::new(error),
        })?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        headers: row.try_get("headers")?,
        attempts: row.try_get("attempts")?,
    })
}

/// The outbox table of a MySQL/MariaDB database, as a relay [`Source`]: what
/// `Relay::builder(mysql_pool, sink).build()` reads from.
#[derive(Debug)]
pub struct MySqlSource {
    pool: MySqlPool,
    table: TableName,
    ordering: Ordering,
    retain: bool,
    low_water: LowWater,
    claim_heads: Arc<str>,
    claim_followers: Arc<str>,
}

impl MySqlSource {
    pub(crate) fn new(pool: MySqlPool, config: &SourceConfig) -> Self {
        let (table, ordering) = (config.table.clone(), config.ordering);
        let t = table.quoted('`');
        let head = head_condition(&t, ordering);
        let claim_heads = format!(
            "SELECT {COLUMNS} FROM {t} o WHERE o.seq >= ? AND {PENDING} AND o.available_at <= UTC_TIMESTAMP(6) {head} \
             ORDER BY o.seq LIMIT ? FOR UPDATE SKIP LOCKED"
        );
        // Later events of aggregates whose head this claim holds: nobody else can claim them.
        // The heads travel as one JSON array, `[[type, id, seq], ...]`.
        let claim_followers = format!(
            "SELECT {COLUMNS} FROM {t} o \
             JOIN JSON_TABLE(?, '$[*]' COLUMNS (aggregate_type VARCHAR(255) PATH '$[0]', \
               aggregate_id VARCHAR(255) PATH '$[1]', seq BIGINT PATH '$[2]')) AS h \
               ON o.aggregate_type = h.aggregate_type AND o.aggregate_id = h.aggregate_id AND o.seq > h.seq \
             WHERE {PENDING} ORDER BY o.seq LIMIT ? FOR UPDATE"
        );
        MySqlSource {
            pool,
            table,
            ordering,
            retain: config.retain,
            low_water: LowWater::default(),
            claim_heads: claim_heads.into(),
            claim_followers: claim_followers.into(),
        }
    }

    fn database_error(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |source| Error::database(operation, &self.table, DIALECT, source)
    }

    async fn claim_in(
        &self,
        tx: &mut Transaction<'static, MySql>,
        max: usize,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = sqlx::query(AssertSqlSafe(self.claim_heads.clone()))
            .bind(self.low_water.get())
            .bind(limit)
            .fetch_all(&mut **tx)
            .await?;
        let mut messages = rows.iter().map(message).collect::<Result<Vec<_>, _>>()?;
        let room = max.saturating_sub(messages.len());
        if self.ordering == Ordering::PerAggregate && room > 0 && !messages.is_empty() {
            let heads: Vec<(&str, &str, i64)> = messages
                .iter()
                .map(|m| (m.aggregate_type.as_str(), m.aggregate_id.as_str(), m.seq))
                .collect();
            let heads = serde_json::to_string(&heads)
                .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
            let rows = sqlx::query(AssertSqlSafe(self.claim_followers.clone()))
                .bind(heads)
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

impl Source for MySqlSource {
    type Claim = MySqlClaim;

    async fn claim(&self, max: usize) -> Result<Option<MySqlClaim>, Error> {
        // READ COMMITTED: the claim locks the rows it returns and nothing else. Under the default
        // REPEATABLE READ, its scan would take gap locks up to the end of the table and stall
        // every writer's INSERT until the batch is settled.
        let mut tx = self
            .pool
            .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
            .await
            .map_err(self.database_error("claim"))?;
        let messages = self
            .claim_in(&mut tx, max)
            .await
            .map_err(self.database_error("claim"))?;
        if messages.is_empty() {
            tx.rollback().await.map_err(self.database_error("claim"))?;
            return Ok(None);
        }
        let seqs = messages.iter().map(|m| m.seq).collect();
        Ok(Some(MySqlClaim {
            pool: self.pool.clone(),
            tx,
            messages,
            seqs,
            low_water: self.low_water.clone(),
            table: self.table.clone(),
            retain: self.retain,
        }))
    }

    async fn wait(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
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

/// A claimed MySQL/MariaDB batch: the rows are locked by this open transaction until it settles.
#[derive(Debug)]
pub struct MySqlClaim {
    pool: MySqlPool,
    tx: Transaction<'static, MySql>,
    messages: Vec<Message>,
    /// The claimed `seq`s, in order.
    seqs: Vec<i64>,
    low_water: LowWater,
    table: TableName,
    retain: bool,
}

impl Claim for MySqlClaim {
    fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    async fn settle(self, settlement: Settlement) -> Result<(), Error> {
        let MySqlClaim {
            pool,
            mut tx,
            seqs,
            low_water,
            table,
            retain,
            ..
        } = self;
        let next = LowWater::after(&seqs, &settlement);
        let mut outcome = match apply(&mut tx, &table, retain, &settlement).await {
            Ok(()) => tx.commit().await,
            Err(error) => Err(error),
        };
        // A deadlock with another relay's claim or settlement rolls this transaction back, but
        // the batch is published already: settle it again in a transaction of its own rather
        // than let it be claimed and published once more. The statements are idempotent.
        let mut tries = 0;
        while let Err(error) = &outcome {
            if !is_deadlock(error) || tries == SETTLE_RETRIES {
                break;
            }
            tries += 1;
            tracing::debug!(table = %table, tries, "settlement deadlocked; settling again");
            outcome = async {
                let mut tx = pool.begin().await?;
                apply(&mut tx, &table, retain, &settlement).await?;
                tx.commit().await
            }
            .await;
        }
        outcome.map_err(|source| Error::database("settle", &table, DIALECT, source))?;
        low_water.advance(next);
        Ok(())
    }
}

/// How many times a deadlocked settlement is settled again before the batch is given up (and
/// claimed again).
const SETTLE_RETRIES: u32 = 3;

/// MySQL's `ER_LOCK_DEADLOCK` (1213): InnoDB chose this transaction as the deadlock's victim and
/// rolled it back.
fn is_deadlock(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|error| error.number() == 1213)
}

/// The settlement's statements, in `tx`: published rows deleted (or marked, with `retain`),
/// failures counted, dead letters set apart.
async fn apply(
    tx: &mut sqlx::MySqlConnection,
    table: &TableName,
    retain: bool,
    settlement: &Settlement,
) -> Result<(), sqlx::Error> {
    let t = table.quoted('`');
    if !settlement.published.is_empty() {
        let seqs = seq_list(settlement.published.iter().copied());
        let sql = if retain {
            format!("UPDATE {t} SET published_at = UTC_TIMESTAMP(6) WHERE seq IN ({seqs})")
        } else {
            format!("DELETE FROM {t} WHERE seq IN ({seqs})")
        };
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    // Failures are few: one statement each.
    let retry = format!(
        "UPDATE {t} SET attempts = attempts + 1, last_error = ?, \
         available_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND WHERE seq = ?"
    );
    for (seq, error, delay) in &settlement.retry {
        sqlx::query(AssertSqlSafe(retry.clone()))
            .bind(error)
            .bind(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX))
            .bind(seq)
            .execute(&mut *tx)
            .await?;
    }
    let dead = format!(
        "UPDATE {t} SET attempts = attempts + 1, last_error = ?, dead_at = UTC_TIMESTAMP(6) WHERE seq = ?"
    );
    for (seq, error) in &settlement.dead {
        sqlx::query(AssertSqlSafe(dead.clone()))
            .bind(error)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// The dead letters of `table` that `filter` selects, oldest first.
pub(crate) async fn dead_letters(
    pool: &MySqlPool,
    table: &TableName,
    filter: &DeadLetterFilter,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let (conditions, values) = filtered(filter);
    let sql = format!(
        "SELECT {COLUMNS}, o.last_error, CAST(TIMESTAMPDIFF(MICROSECOND, o.dead_at, UTC_TIMESTAMP(6)) / 1e6 AS DOUBLE) AS dead_secs FROM {} o \
         WHERE o.dead_at IS NOT NULL{conditions} ORDER BY o.seq LIMIT {}",
        table.quoted('`'),
        "?".to_owned(),
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
    pool: &MySqlPool,
    table: &TableName,
    filter: &DeadLetterFilter,
) -> Result<u64, sqlx::Error> {
    let (conditions, values) = filtered(filter);
    let sql = format!(
        "SELECT count(*) AS dead FROM {} o WHERE o.dead_at IS NOT NULL{conditions}",
        table.quoted('`')
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
        |_| "?".to_owned(),
        |p| format!("o.dead_at <= UTC_TIMESTAMP(6) - INTERVAL {p} MICROSECOND"),
    )
}

/// Binds the filter's values, in the order of their placeholders.
fn bind<'q>(
    mut query: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    values: Vec<FilterValue<'q>>,
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    for value in values {
        query = match value {
            FilterValue::Text(text) => query.bind(text),
            FilterValue::Id(id) => query.bind(id.hyphenated().to_string()),
            FilterValue::Age(age) => query.bind(i64::try_from(age.as_micros()).unwrap_or(i64::MAX)),
        };
    }
    query
}

/// Makes dead letters deliverable again, attempts reset. `ids`: `None` for all.
pub(crate) async fn replay(
    pool: &MySqlPool,
    table: &TableName,
    ids: Option<&[uuid::Uuid]>,
) -> Result<u64, sqlx::Error> {
    let reset = format!(
        "UPDATE {} SET dead_at = NULL, attempts = 0, available_at = UTC_TIMESTAMP(6) WHERE dead_at IS NOT NULL",
        table.quoted('`')
    );
    let done = match ids {
        Some([]) => return Ok(0),
        Some(ids) => {
            let placeholders = vec!["?"; ids.len()].join(",");
            let sql = format!("{reset} AND id IN ({placeholders})");
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in ids {
                query = query.bind(id.hyphenated().to_string());
            }
            query.execute(pool).await?
        }
        None => sqlx::query(AssertSqlSafe(reset)).execute(pool).await?,
    };
    Ok(done.rows_affected())
}

/// Deletes published rows older than `retention`, at most `batch` per statement; returns how
/// many went.
pub(crate) async fn purge(
    pool: &MySqlPool,
    table: &TableName,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "DELETE FROM {} WHERE published_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND ORDER BY seq LIMIT ?",
        table.quoted('`')
    );
    let retention = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    crate::relay::source::delete_in_batches(batch, || async {
        Ok(sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(retention)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected())
    })
    .await
}

/// The oldest pending event: its `seq` and its age in seconds.
pub(crate) async fn oldest_pending(
    pool: &MySqlPool,
    table: &TableName,
) -> Result<Option<(i64, f64)>, sqlx::Error> {
    let sql = format!(
        "SELECT CAST(seq AS SIGNED), TIMESTAMPDIFF(MICROSECOND, created_at, UTC_TIMESTAMP(6)) / 1e6 FROM {} \
         WHERE dead_at IS NULL AND published_at IS NULL ORDER BY seq LIMIT 1",
        table.quoted('`')
    );
    sqlx::query_as(AssertSqlSafe(sql))
        .fetch_optional(pool)
        .await
}
