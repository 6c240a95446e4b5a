//! The relay's side of the PostgreSQL outbox: the statements that claim with
//! `FOR UPDATE SKIP LOCKED` and settle, and waking on `NOTIFY`.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres};
use tokio::sync::Mutex;

use crate::TableName;
use crate::message::Message;
use crate::relay::source::{Settlement, SourceConfig};
use crate::store::locking::{RowLocking, TableClaim, TableSource};
use crate::store::table::{
    self, ByteBudget, MessageRow, claimable, delete_in_batches, head_condition, pending,
};

/// The outbox table of a PostgreSQL database, as a relay [`Source`](crate::relay::source::Source):
/// what `Relay::builder(pg_pool, sink).build()` reads from.
pub type PgSource = TableSource<Postgres>;

/// A claimed PostgreSQL batch: the rows are locked by its open transaction until it settles.
pub type PgClaim = TableClaim<Postgres>;

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

impl RowLocking for Postgres {
    // The claim's commit need not wait for the disk: a settlement lost in a database crash
    // only means its events are published again, which at-least-once allows. Waiting for the
    // flush would put an fsync in every batch's latency.
    const BEGIN_CLAIM: &'static str = "BEGIN; SET LOCAL synchronous_commit = off";

    /// The connection listening for the table's notifications, once opened.
    type Wakeup = Mutex<Option<PgListener>>;

    fn claim_statements(config: &SourceConfig) -> (String, String) {
        let table = &config.table;
        let t = table.quoted('"');
        let head = head_condition(&t, config.ordering, config.parked_only);
        let pending = claimable("o", config.parked_only);
        let heads = format!(
            "SELECT {COLUMNS} FROM {t} o WHERE o.seq >= $1 AND {pending} AND o.available_at <= clock_timestamp() {head} \
             ORDER BY o.seq LIMIT $2 FOR UPDATE SKIP LOCKED"
        );
        let followers = format!(
            "SELECT {COLUMNS} FROM {t} o \
             JOIN unnest($1::text[], $2::text[], $3::int8[]) AS h(aggregate_type, aggregate_id, seq) \
               ON o.aggregate_type = h.aggregate_type AND o.aggregate_id = h.aggregate_id AND o.seq > h.seq \
             WHERE {pending} ORDER BY o.seq LIMIT $4 FOR UPDATE OF o"
        );
        (heads, followers)
    }

    async fn claim_heads(
        conn: &mut PgConnection,
        sql: &str,
        from_seq: i64,
        limit: i64,
        budget: &mut ByteBudget,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let rows = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(sql))
            .bind(from_seq)
            .bind(limit)
            .fetch(conn);
        table::messages_within(rows, budget).await
    }

    async fn claim_followers(
        conn: &mut PgConnection,
        sql: &str,
        heads: &[Message],
        limit: i64,
        budget: &mut ByteBudget,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let (types, (ids, seqs)): (Vec<_>, (Vec<_>, Vec<_>)) = heads
            .iter()
            .map(|m| (m.aggregate_type.as_str(), (m.aggregate_id.as_str(), m.seq)))
            .unzip();
        let rows = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(sql))
            .bind(types)
            .bind(ids)
            .bind(seqs)
            .bind(limit)
            .fetch(conn);
        table::messages_within(rows, budget).await
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
        let sql = format!(
            "SELECT seq, extract(epoch FROM clock_timestamp() - created_at)::float8 FROM {} o \
             WHERE {} ORDER BY seq LIMIT 1",
            table.quoted('"'),
            pending("o"),
        );
        sqlx::query_as(AssertSqlSafe(sql))
            .fetch_optional(pool)
            .await
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
