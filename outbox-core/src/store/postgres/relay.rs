//! The relay's side of the PostgreSQL outbox: the statements that claim with
//! `FOR UPDATE SKIP LOCKED` and settle, and waking on `NOTIFY`.

use std::time::Duration;

use futures_util::StreamExt;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Row};
use tokio::sync::Mutex;

use crate::message::Message;
use crate::relay::Ordering;
use crate::relay::source::{Settlement, SourceConfig};
use crate::store::locking::{
    AggregateKey, ClaimStatements, RowLocking, Scan, TableClaim, TableSource,
};
use crate::store::table::{
    ByteBudget, MessageRow, claimable, deferred, delete_in_batches, head_probe, in_order, pending,
};
use crate::{Error, TableName};

/// The outbox table of a PostgreSQL database, as a relay [`Source`](crate::relay::source::Source):
/// what `Relay::builder(pg_pool, sink).build()` reads from.
pub type PgSource = TableSource<Postgres>;

/// A claimed PostgreSQL batch: the rows are locked by its open transaction until it settles.
pub type PgClaim = TableClaim<Postgres>;

/// PostgreSQL's clock in the claims: the time of each statement's evaluation, not of its
/// transaction's start.
const NOW: &str = "clock_timestamp()";

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
    // The dead-letter queries' index holds only dead letters: recording never touches it.
    let index = format!(
        "CREATE INDEX IF NOT EXISTS \"{name}_aggregate_idx\" ON {quoted} (aggregate_type, aggregate_id, seq);
         CREATE INDEX IF NOT EXISTS \"{name}_dead_idx\" ON {quoted} (seq) WHERE dead_at IS NOT NULL;"
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

/// The columns of a [`MessageRow`], from a table aliased `o`.
pub(super) const COLUMNS: &str = "o.seq, o.id::text AS id, o.aggregate_type, o.aggregate_id, o.event_type, o.payload::text AS payload, \
                       o.headers::text AS headers, o.attempts";

/// The stored size of an event's payload and headers (compressed or not), read without
/// fetching the values.
const STORED: &str = "(pg_column_size(o.payload) + coalesce(pg_column_size(o.headers), 0))::int8";

/// Whether the database compressed an event's payload or headers.
const COMPRESSED: &str = "(pg_column_compression(o.payload) IS NOT NULL OR pg_column_compression(o.headers) IS NOT NULL)";

/// The largest event, in stored bytes, that a claim's locking statements return whole; a larger
/// or compressed one is read afterwards, only if the byte budget takes it. (Returning them all
/// would read, convert and sort every candidate's payload however few the budget takes.)
const INLINE_BYTES: i64 = 2048;

/// How many times its stored size a compressed event is taken to be when deciding how many
/// events one read fetches. Events the budget leaves out are still fetched (and dropped), so
/// the guess bounds the waste; the budget itself is always kept exactly.
const COMPRESSION_GUESS: usize = 16;

/// What a claim's locking statements return of each event, from a table aliased `o`: its
/// columns, with the payload and headers only when it is `inline` (small and stored plainly),
/// and its stored size.
fn locked_columns() -> String {
    let inline = format!("({STORED} <= {INLINE_BYTES} AND NOT {COMPRESSED})");
    format!(
        "o.seq, o.id::text AS id, o.aggregate_type, o.aggregate_id, o.event_type, o.attempts, \
         {STORED} AS stored, {COMPRESSED} AS compressed, {inline} AS inline, \
         CASE WHEN {inline} THEN o.payload::text END AS payload, \
         CASE WHEN {inline} THEN o.headers::text END AS headers"
    )
}

/// An event a locking statement returned: whole when it was inline, else to be read.
struct LockedRow {
    seq: i64,
    stored: i64,
    compressed: bool,
    row: Option<MessageRow>,
}

impl sqlx::FromRow<'_, PgRow> for LockedRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let inline: bool = row.try_get("inline")?;
        Ok(LockedRow {
            seq: row.try_get("seq")?,
            stored: row.try_get("stored")?,
            compressed: row.try_get("compressed")?,
            row: if inline {
                Some(MessageRow::from_row(row)?)
            } else {
                None
            },
        })
    }
}

impl LockedRow {
    /// Its size as far as it is known before reading it.
    fn expected_size(&self) -> usize {
        match &self.row {
            Some(row) => row.size(),
            None => {
                let stored = usize::try_from(self.stored).unwrap_or(0);
                if self.compressed {
                    stored.saturating_mul(COMPRESSION_GUESS)
                } else {
                    stored
                }
            }
        }
    }
}

impl RowLocking for Postgres {
    // The claim's commit need not wait for the disk: a settlement lost in a database crash
    // only means its events are published again, which at-least-once allows. Waiting for the
    // flush would put an fsync in every batch's latency.
    //
    // Each claim's statements are planned for their parameters: how many candidates a window
    // holds, and how many heads a claim asks for, decide between an index probe and a scan.
    const BEGIN_CLAIM: &'static str = "BEGIN; SET LOCAL synchronous_commit = off; \
                                       SET LOCAL plan_cache_mode = force_custom_plan";

    /// The connection listening for the table's notifications, once opened.
    type Wakeup = Mutex<Option<PgListener>>;

    async fn preflight(pool: &PgPool, table: &TableName) -> Result<(), Error> {
        let database = |source| Error::database("start the relay", table, "PostgreSQL", source);
        let mut conn = pool.acquire().await.map_err(database)?;
        match super::cockroach::version(&mut conn)
            .await
            .map_err(database)?
        {
            Some(_) => Err(super::cockroach::relay_unsupported()),
            None => Ok(()),
        }
    }

    fn claim_statements(config: &SourceConfig) -> ClaimStatements {
        let table = &config.table;
        let t = table.quoted('"');
        let claimable_o = claimable("o", config.parked_only);
        // Where order matters, an event deferred until later is stepped over.
        let claimable_e = in_order("e", config.parked_only, NOW);
        let locked = locked_columns();
        let first = format!(
            "SELECT o.seq FROM {t} o WHERE o.seq >= $1 AND {claimable_o} ORDER BY o.seq LIMIT 1"
        );
        // In `seq` order: the inner query sorts the rows with their values still in the
        // table's storage, and the outer one converts them one at a time as they are sent.
        let read = format!(
            "SELECT {COLUMNS} FROM (SELECT o.seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, \
               o.payload, o.headers, o.attempts FROM {t} o WHERE o.seq = ANY($1) ORDER BY o.seq OFFSET 0) o"
        );
        if config.ordering == Ordering::Unordered {
            // Row addresses locked first, columns read after: see `heads_among` below.
            let heads = format!(
                "SELECT {locked} FROM {t} o WHERE o.ctid = ANY(ARRAY( \
                   SELECT o.ctid FROM {t} o WHERE o.seq >= $1 AND {claimable_o} \
                   AND o.available_at <= clock_timestamp() \
                   ORDER BY o.seq LIMIT $2 FOR UPDATE SKIP LOCKED)) \
                 ORDER BY o.seq"
            );
            return ClaimStatements {
                first,
                heads,
                dense_heads: None,
                window_candidates: None,
                followers: String::new(),
                beyond: None,
                beyond_lock: None,
                window_followers: None,
                read: Some(read),
            };
        }
        // The heads among the `candidates` (a condition on `o`), locked, in `seq` order. Most
        // candidates a claim skips are the heads other relays hold; a row another transaction
        // locked carries its `xmax`, so those are tried without first probing for an earlier
        // event of their aggregate (the probe costs more than the skip), and the few of them
        // that turn out free are probed once locked. A free one that is not a head stays locked
        // but unclaimed until the claim ends.
        //
        // The locking scan returns row addresses only, and the claimed rows' columns are read
        // by address afterwards: the scan computes its output for every row it tries, so with
        // the columns in it each row skipped (held by another relay) would have its payload
        // converted for nothing. A row updated and committed after the statement began (a
        // retry come due) is locked at its new address, which the statement cannot see: it
        // stays locked but unclaimed until the claim ends, and is claimed by the next one.
        let probe = head_probe(&t, config.parked_only, NOW);
        let heads_among = |candidates: &str| {
            format!(
                "SELECT {locked} FROM {t} o WHERE o.ctid = ANY(ARRAY( \
                   SELECT o.ctid FROM ( \
                     SELECT o.ctid, o.seq, o.aggregate_type, o.aggregate_id, \
                       o.xmax <> '0'::xid AS hinted FROM {t} o \
                     WHERE {candidates} AND {claimable_o} AND o.available_at <= clock_timestamp() \
                     AND (o.xmax <> '0'::xid OR {probe}) \
                     ORDER BY o.seq LIMIT $2 FOR UPDATE SKIP LOCKED) o \
                   WHERE NOT o.hinted OR {probe})) \
                 ORDER BY o.seq"
            )
        };
        // The candidates are the first event of each aggregate among the next `$3` claimable
        // ones: one probe per aggregate, not per event. A probe steps over the aggregate's
        // events published since the last vacuum (and, in retention mode, those kept), so a
        // busy aggregate must not be probed once per event. The candidates are an array, so
        // that the index returns them in `seq` order and the probes stop once the batch is full.
        let heads = heads_among(&format!(
            "o.seq = ANY(ARRAY( \
               SELECT min(w.seq) FROM ( \
                 SELECT w.seq, w.aggregate_type, w.aggregate_id FROM {t} w \
                 WHERE w.seq >= $1 AND {claimable_w} ORDER BY w.seq LIMIT $3) w \
               GROUP BY w.aggregate_type, w.aggregate_id))",
            claimable_w = in_order("w", config.parked_only, NOW),
        ));
        // Each head's next events read in order from the aggregate index, at most as
        // many as the batch has room for: never every pending event of a busy aggregate.
        let followers = format!(
            "SELECT {locked} FROM {t} o WHERE o.seq IN ( \
               SELECT f.seq FROM unnest($1::text[], $2::text[], $3::int8[]) AS h(aggregate_type, aggregate_id, seq) \
               CROSS JOIN LATERAL ( \
                 SELECT e.seq FROM {t} e WHERE e.aggregate_type = h.aggregate_type \
                   AND e.aggregate_id = h.aggregate_id AND e.seq > h.seq AND {claimable_e} \
                 ORDER BY e.seq LIMIT $4) f \
               ORDER BY f.seq LIMIT $4) \
             AND {claimable_o} ORDER BY o.seq FOR UPDATE OF o"
        );
        // The heads' later events among the window's: the oldest first, so that under a few busy
        // aggregates the batch fills from the window already in the cache instead of reading as
        // many events of every head as it has room for. The window holds every claimable event
        // from `$1` on up to its end, so those of one aggregate are consecutive.
        let window_followers = format!(
            "SELECT {locked} FROM {t} o WHERE o.seq IN ( \
               SELECT w.seq FROM ( \
                 SELECT w.seq, w.aggregate_type, w.aggregate_id FROM {t} w \
                 WHERE w.seq >= $1 AND {claimable_w} ORDER BY w.seq LIMIT $2) w \
               JOIN unnest($3::text[], $4::text[], $5::int8[]) AS h(aggregate_type, aggregate_id, seq) \
                 ON w.aggregate_type = h.aggregate_type AND w.aggregate_id = h.aggregate_id AND w.seq > h.seq \
               ORDER BY w.seq LIMIT $6) \
             AND {claimable_o} ORDER BY o.seq FOR UPDATE OF o",
            claimable_w = in_order("w", config.parked_only, NOW),
        );
        // The heads of the next `$3` aggregates in key order after (`$1`, `$2`) — from the first
        // after ('', ''), since recording refuses an empty aggregate type: one index probe per
        // aggregate (a skip scan written as a recursive query). `beyond_lock` locks them, oldest
        // first, and probes them again: an earlier event may have committed in between.
        let next_head = |after: &str| {
            format!(
                "SELECT e.aggregate_type, e.aggregate_id, e.seq FROM {t} e WHERE {claimable_e} {after} \
                 ORDER BY e.aggregate_type, e.aggregate_id, e.seq LIMIT 1"
            )
        };
        let beyond = format!(
            "WITH RECURSIVE h AS ( \
               (SELECT f.*, 1 AS n FROM ({first_head}) f) \
               UNION ALL \
               SELECT n.aggregate_type, n.aggregate_id, n.seq, h.n + 1 FROM h CROSS JOIN LATERAL ({next}) n \
               WHERE h.n < $3) \
             SELECT h.aggregate_type, h.aggregate_id, h.seq FROM h",
            first_head = next_head("AND (e.aggregate_type, e.aggregate_id) > ($1::text, $2::text)"),
            next = next_head(
                "AND (e.aggregate_type, e.aggregate_id) > (h.aggregate_type, h.aggregate_id)"
            ),
        );
        let beyond_lock = heads_among("o.seq = ANY($1::int8[]) AND o.seq <> ALL($3::int8[])");
        // One probe per event in `seq` order within the next `$3` seqs, until the batch is full.
        let dense_heads = heads_among("o.seq >= $1 AND o.seq < $1 + $3");
        ClaimStatements {
            first,
            heads,
            dense_heads: Some(dense_heads),
            window_candidates: None,
            followers,
            beyond: Some(beyond),
            beyond_lock: Some(beyond_lock),
            window_followers: Some(window_followers),
            read: Some(read),
        }
    }

    async fn first_claimable(
        conn: &mut PgConnection,
        sql: &str,
        from_seq: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(from_seq)
            .fetch_optional(conn)
            .await
    }

    async fn claim_heads(
        conn: &mut PgConnection,
        statements: &ClaimStatements,
        dense: bool,
        scan: Scan,
        limit: i64,
        budget: &mut ByteBudget,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let sql = match &statements.dense_heads {
            Some(dense_heads) if dense => dense_heads,
            _ => &statements.heads,
        };
        let locked: Vec<LockedRow> = sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(scan.from)
            .bind(limit)
            .bind(scan.window)
            .fetch_all(&mut *conn)
            .await?;
        take_within(conn, statements, locked, budget).await
    }

    async fn claim_followers(
        conn: &mut PgConnection,
        statements: &ClaimStatements,
        heads: &[Message],
        scan: Scan,
        limit: i64,
        budget: &mut ByteBudget,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let (types, (ids, seqs)): (Vec<_>, (Vec<_>, Vec<_>)) = heads
            .iter()
            .map(|m| (m.aggregate_type.as_str(), (m.aggregate_id.as_str(), m.seq)))
            .unzip();
        let mut taken = Vec::new();
        if let Some(window_followers) = &statements.window_followers {
            let locked: Vec<LockedRow> = sqlx::query_as(AssertSqlSafe(window_followers.as_str()))
                .bind(scan.from)
                .bind(scan.window)
                .bind(&types)
                .bind(&ids)
                .bind(&seqs)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
            let found = i64::try_from(locked.len()).unwrap_or(i64::MAX);
            taken = take_within(conn, statements, locked, budget).await?;
            if found >= limit || budget.is_full() {
                return Ok(taken);
            }
        }
        // Beyond the window (all of the window's were taken): each aggregate's next events
        // after the last one the claim holds.
        let mut last: std::collections::HashMap<(&str, &str), i64> = types
            .iter()
            .zip(&ids)
            .zip(&seqs)
            .map(|((t, i), s)| ((*t, *i), *s))
            .collect();
        for m in &taken {
            if let Some(seq) = last.get_mut(&(m.aggregate_type.as_str(), m.aggregate_id.as_str())) {
                *seq = (*seq).max(m.seq);
            }
        }
        let (types, (ids, seqs)): (Vec<_>, (Vec<_>, Vec<_>)) =
            last.into_iter().map(|((t, i), s)| (t, (i, s))).unzip();
        let room = limit.saturating_sub(i64::try_from(taken.len()).unwrap_or(i64::MAX));
        let locked: Vec<LockedRow> = sqlx::query_as(AssertSqlSafe(statements.followers.as_str()))
            .bind(types)
            .bind(ids)
            .bind(seqs)
            .bind(room)
            .fetch_all(&mut *conn)
            .await?;
        taken.extend(take_within(conn, statements, locked, budget).await?);
        Ok(taken)
    }

    async fn claim_beyond(
        conn: &mut PgConnection,
        statements: &ClaimStatements,
        taken: &[i64],
        after: Option<&AggregateKey>,
        aggregates: i64,
        limit: i64,
        budget: &mut ByteBudget,
    ) -> Result<(Vec<Message>, Option<AggregateKey>), sqlx::Error> {
        let (Some(beyond), Some(lock)) = (&statements.beyond, &statements.beyond_lock) else {
            return Ok((Vec::new(), None));
        };
        let heads: Vec<(String, String, i64)> = sqlx::query_as(AssertSqlSafe(beyond.as_str()))
            .bind(after.map_or("", |key| key.0.as_str()))
            .bind(after.map_or("", |key| key.1.as_str()))
            .bind(aggregates)
            .fetch_all(&mut *conn)
            .await?;
        // Fewer than asked for: the search reached the last aggregate, the next one starts over.
        let next = (i64::try_from(heads.len()).unwrap_or(i64::MAX) >= aggregates)
            .then(|| heads.last().map(|(t, i, _)| (t.clone(), i.clone())))
            .flatten();
        if heads.is_empty() {
            return Ok((Vec::new(), next));
        }
        let seqs: Vec<i64> = heads.iter().map(|(_, _, seq)| *seq).collect();
        let locked: Vec<LockedRow> = sqlx::query_as(AssertSqlSafe(lock.as_str()))
            .bind(seqs)
            .bind(limit)
            .bind(taken)
            .fetch_all(&mut *conn)
            .await?;
        Ok((take_within(conn, statements, locked, budget).await?, next))
    }

    async fn settle(
        conn: &mut PgConnection,
        table: &TableName,
        retain: bool,
        settlement: &Settlement,
    ) -> Result<(), sqlx::Error> {
        let t = table.quoted('"');
        if !settlement.published.is_empty() {
            let sql = if retain {
                format!("UPDATE {t} SET published_at = clock_timestamp() WHERE seq = ANY($1)")
            } else {
                format!("DELETE FROM {t} WHERE seq = ANY($1)")
            };
            sqlx::query(AssertSqlSafe(sql))
                .bind(&settlement.published)
                .execute(&mut *conn)
                .await?;
        }
        if !settlement.retry.is_empty() {
            let (seqs, (errors, delays)): (Vec<i64>, (Vec<&str>, Vec<f64>)) = settlement
                .retry
                .iter()
                .map(|(seq, error, delay)| (*seq, (error.as_str(), delay.as_secs_f64())))
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
                .execute(&mut *conn)
                .await?;
        }
        if !settlement.dead.is_empty() {
            let (seqs, errors): (Vec<i64>, Vec<&str>) = settlement
                .dead
                .iter()
                .map(|(seq, error)| (*seq, error.as_str()))
                .unzip();
            let sql = format!(
                "UPDATE {t} o SET attempts = o.attempts + 1, last_error = r.error, dead_at = clock_timestamp() \
                 FROM unnest($1::int8[], $2::text[]) AS r(seq, error) WHERE o.seq = r.seq"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(seqs)
                .bind(errors)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// `40P01 deadlock_detected`.
    fn is_deadlock(error: &sqlx::Error) -> bool {
        error
            .as_database_error()
            .and_then(|error| error.code())
            .is_some_and(|code| code == "40P01")
    }

    /// Deletes published rows older than `retention`, at most `batch` per statement; returns how
    /// many went.
    async fn purge(
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
        delete_in_batches(batch, || async {
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
    async fn oldest_pending(
        pool: &PgPool,
        table: &TableName,
    ) -> Result<Option<(i64, f64)>, sqlx::Error> {
        // The oldest pending event's seq, deferred or not (the low-water mark must not pass an
        // event that comes due later); the lag, of the oldest that is not deferred, from when
        // it was due.
        let (t, pending) = (table.quoted('"'), pending("o"));
        let deferred = deferred("o", NOW);
        let sql = format!(
            "SELECT (SELECT o.seq FROM {t} o WHERE {pending} ORDER BY o.seq LIMIT 1), \
               (SELECT extract(epoch FROM {NOW} - CASE WHEN o.attempts = 0 \
                  THEN greatest(o.created_at, o.available_at) ELSE o.created_at END)::float8 \
                FROM {t} o WHERE {pending} AND NOT {deferred} ORDER BY o.seq LIMIT 1)"
        );
        let (seq, lag): (Option<i64>, Option<f64>) =
            sqlx::query_as(AssertSqlSafe(sql)).fetch_one(pool).await?;
        Ok(seq.map(|seq| (seq, lag.unwrap_or(0.0))))
    }

    async fn wait(
        pool: &PgPool,
        table: &TableName,
        listen: bool,
        listener: &Mutex<Option<PgListener>>,
        timeout: Duration,
    ) {
        if !listen {
            tokio::time::sleep(timeout).await;
            return;
        }
        let mut guard = listener.lock().await;
        if guard.is_none() {
            match PgListener::connect_with(pool).await {
                Ok(mut listener) => match listener.listen(&channel(table)).await {
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
}

/// The events of `locked` (in `seq` order) that `budget` takes. Those that are not inline are
/// read in as few statements as their sizes allow: each reads those among the next events
/// whose sizes (a compressed one's guessed) fit what the budget has left, at least one. Events
/// a read fetches beyond the budget are dropped as they arrive.
async fn take_within(
    conn: &mut PgConnection,
    statements: &ClaimStatements,
    mut locked: Vec<LockedRow>,
    budget: &mut ByteBudget,
) -> Result<Vec<Message>, sqlx::Error> {
    let Some(read) = statements.read.as_deref() else {
        return Err(sqlx::Error::Protocol(
            "the PostgreSQL claim statements have no read by seq".into(),
        ));
    };
    let mut messages = Vec::with_capacity(locked.len());
    let mut start = 0;
    while start < locked.len() && !budget.is_full() {
        let mut left = Some(budget.left());
        let fits = locked[start..]
            .iter()
            .take_while(|event| {
                left = left.and_then(|left| left.checked_sub(event.expected_size()));
                left.is_some()
            })
            .count()
            .max(1);
        let chunk = &mut locked[start..start + fits];
        start += fits;
        let unread: Vec<i64> = chunk
            .iter()
            .filter(|event| event.row.is_none())
            .map(|event| event.seq)
            .collect();
        let mut rows = (!unread.is_empty()).then(|| {
            sqlx::query_as::<_, MessageRow>(AssertSqlSafe(read))
                .bind(unread)
                .fetch(&mut *conn)
        });
        for event in chunk {
            let row = match event.row.take() {
                Some(row) => row,
                // Read in `seq` order; a row this claim locked cannot have gone.
                None => match rows.as_mut() {
                    Some(rows) => rows.next().await.ok_or(sqlx::Error::RowNotFound)??,
                    None => return Err(sqlx::Error::RowNotFound),
                },
            };
            if row.seq() != event.seq {
                return Err(sqlx::Error::Protocol(format!(
                    "read event {} where event {} was expected",
                    row.seq(),
                    event.seq
                )));
            }
            if !budget.admit(&row) {
                return Ok(messages);
            }
            messages.push(Message::try_from(row)?);
        }
    }
    Ok(messages)
}

impl crate::relay::source::RelaySql for Postgres {
    type Source = PgSource;

    fn __source(pool: PgPool, config: &SourceConfig) -> PgSource {
        TableSource::new(pool, config)
    }

    async fn __discover(
        pool: &PgPool,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Vec<(Option<String>, String)>, sqlx::Error> {
        // A schema named in the pattern stays in the names; the current one is left out.
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT c.table_schema::text, c.table_name::text FROM information_schema.columns c \
             WHERE c.column_name = 'available_at' \
               AND c.table_schema NOT IN ('pg_catalog', 'information_schema') \
               AND c.table_schema LIKE coalesce($1, current_schema()) ESCAPE '\\' \
               AND c.table_name LIKE $2 ESCAPE '\\' \
               AND EXISTS (SELECT 1 FROM information_schema.columns a \
                 WHERE a.table_schema = c.table_schema AND a.table_name = c.table_name \
                   AND a.column_name = 'aggregate_type') \
             ORDER BY 1, 2",
        )
        .bind(schema)
        .bind(name)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(found, table)| (schema.map(|_| found), table))
            .collect())
    }
}
