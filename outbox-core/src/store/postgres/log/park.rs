//! Parking: the events that failed, and the later events of their aggregates, kept in the
//! table where the polling machinery retries them.

use super::*;

/// Returns once the transactions `xids` are visible to new snapshots. The log hands over a
/// transaction as soon as its commit record is flushed, a moment before its rows are visible
/// to other sessions: a `DELETE` in that moment would find nothing, and leave a published row
/// behind for good. Once the transactions are visible, a row that is missing is really gone
/// (published before a restart), so the statements that follow need no retry.
pub(super) async fn wait_visible(conn: &mut PgConnection, xids: &[i64]) -> Result<(), sqlx::Error> {
    // A 32-bit xid of a committed transaction is in the epoch of the snapshot's xmax, or the
    // one before when it wrapped around since.
    const INVISIBLE: &str = "SELECT count(*) FROM (SELECT pg_current_snapshot() AS s) c, \
        LATERAL (SELECT (pg_snapshot_xmax(c.s)::text::int8 >> 32 << 32) AS epoch) e, unnest($1::int8[]) AS x(xid) \
        WHERE NOT pg_visible_in_snapshot((CASE WHEN (e.epoch | x.xid) >= pg_snapshot_xmax(c.s)::text::int8 \
          THEN (e.epoch | x.xid) - 4294967296 ELSE e.epoch | x.xid END)::text::xid8, c.s)";
    let mut pause = Duration::from_millis(1);
    loop {
        let invisible: i64 = sqlx::query_scalar(INVISIBLE)
            .bind(xids)
            .fetch_one(&mut *conn)
            .await?;
        if invisible == 0 {
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

impl Outcome {
    pub(super) fn is_empty(&self) -> bool {
        self.published_rows.is_empty()
            && self.parked_rows.is_empty()
            && self.parked_messages.is_empty()
    }
}

pub(super) async fn park_messages(
    conn: &mut PgConnection,
    table: &str,
    parked: &[Parked],
) -> Result<(), sqlx::Error> {
    // `ORDER BY p.ord`: the rows get their `seq` in the log's order.
    let sql = format!(
        "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers, \
           attempts, last_error, available_at, dead_at, parked) \
         SELECT p.id, p.aggregate_type, p.aggregate_id, p.event_type, p.payload::jsonb, p.headers::jsonb, \
           p.attempts, p.error, clock_timestamp() + p.delay * interval '1 second', \
           CASE WHEN p.dead THEN clock_timestamp() END, true \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
           $7::int4[], $8::text[], $9::float8[], $10::bool[]) WITH ORDINALITY \
           AS p(id, aggregate_type, aggregate_id, event_type, payload, headers, attempts, error, delay, dead, ord) \
         ORDER BY p.ord",
    );
    pub(super) fn column<'a, T>(parked: &'a [Parked], value: impl Fn(&'a Parked) -> T) -> Vec<T> {
        parked.iter().map(value).collect()
    }
    sqlx::query(AssertSqlSafe(sql))
        .bind(column(parked, |p| p.message.id))
        .bind(column(parked, |p| p.message.aggregate_type.as_str()))
        .bind(column(parked, |p| p.message.aggregate_id.as_str()))
        .bind(column(parked, |p| p.message.event_type.as_str()))
        .bind(column(parked, |p| p.message.payload.as_str()))
        .bind(column(parked, |p| p.message.headers.as_deref()))
        .bind(column(parked, |p| p.attempts))
        .bind(column(parked, |p| p.error.as_deref()))
        .bind(column(parked, |p| p.delay.as_secs_f64()))
        .bind(column(parked, |p| p.dead))
        .execute(conn)
        .await?;
    Ok(())
}
