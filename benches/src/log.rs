//! `relay` on the transaction log: a [`LogStream`] draining events recorded as table rows
//! (`Outbox::log_tailing`) and as WAL messages (`Outbox::wal_messages`) into the in-process
//! sink, and their commit-to-publish latency, beside the polling relay measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use outbox::relay::Relay;
use outbox::store::postgres::LogStream;
use outbox::{Outbox, TableName};
use sqlx::{AssertSqlSafe, PgPool};

use crate::relay::{EVENTS, Observed, in_process, latency_from, latency_seconds};

const TABLE: &str = "outbox_bench_log";

/// The benchmark's log-tailed outbox, in table mode or WAL mode.
pub(crate) fn outbox(wal: bool) -> Outbox {
    let outbox = Outbox::for_table(TableName::from_static(TABLE));
    if wal {
        outbox.wal_messages()
    } else {
        outbox.log_tailing()
    }
}

fn replication_url() -> String {
    std::env::var("OUTBOX_BENCH_REPLICATION_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Drops the table, its publication and its slot (no relay may stream it).
pub(crate) async fn drop_all(pool: &PgPool) -> Result<(), sqlx::Error> {
    let slot = format!("{TABLE}_relay");
    for _ in 0..50 {
        let active: Option<bool> =
            sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                .bind(&slot)
                .fetch_optional(pool)
                .await?;
        match active {
            None => break,
            Some(true) => tokio::time::sleep(Duration::from_millis(100)).await,
            Some(false) => {
                sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(&slot)
                    .execute(pool)
                    .await?;
                break;
            }
        }
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP PUBLICATION IF EXISTS {TABLE}_pub; DROP TABLE IF EXISTS {TABLE}"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// Events per second from `EVENTS` committed events (one transaction, 20,000 aggregates) to
/// the in-process sink, from the relay's start: the server decodes the log as it streams.
async fn drain(pool: &PgPool, wal: bool) -> Result<f64, Box<dyn std::error::Error>> {
    drop_all(pool).await?;
    let outbox = outbox(wal);
    outbox.migrate(pool).await?;
    let sql = if wal {
        format!(
            "SELECT count(pg_logical_emit_message(true, 'outbox:{TABLE}', json_build_object(\
               'id', gen_random_uuid(), 'aggregate_type', 'account', 'aggregate_id', 'acc-' || (i % 20000), \
               'event_type', 'Numbered', 'headers', NULL, 'payload', json_build_object('n', i))::text)) \
             FROM generate_series(1, {EVENTS}) AS i"
        )
    } else {
        format!(
            "INSERT INTO {TABLE} (id, aggregate_type, aggregate_id, event_type, payload) \
             SELECT gen_random_uuid(), 'account', 'acc-' || (i % 20000), 'Numbered', jsonb_build_object('n', i) \
             FROM generate_series(1, {EVENTS}) AS i"
        )
    };
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(pool).await?;
    let delivered = Arc::new(AtomicUsize::new(0));
    let sink = Observed::counting(in_process(), delivered.clone());
    let log = LogStream::new(pool.clone(), &replication_url())?;
    let start = Instant::now();
    let relay = tokio::spawn(
        Relay::builder(log, sink)
            .outbox(&outbox)
            .batch_size(1_000)
            .build()
            .run(std::future::pending()),
    );
    while delivered.load(AtomicOrdering::Relaxed) < EVENTS as usize {
        if start.elapsed() > Duration::from_secs(300) {
            relay.abort();
            return Err(format!(
                "the log relay delivered {} of {EVENTS} events in 5 minutes",
                delivered.load(AtomicOrdering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
    relay.abort();
    drop_all(pool).await?;
    Ok(rate)
}

/// Commit-to-publish latency (p50, p99 in ms) at 1,000 events/s, no trigger, no polling.
async fn latency(pool: &PgPool, wal: bool) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    drop_all(pool).await?;
    let outbox = outbox(wal);
    outbox.migrate(pool).await?;
    let log = LogStream::new(pool.clone(), &replication_url())?;
    let label = if wal { "log/wal" } else { "log/table" };
    let seconds = latency_seconds();
    let measured = latency_from(
        pool,
        log,
        &outbox,
        in_process(),
        None,
        1_000,
        seconds,
        label,
    )
    .await;
    drop_all(pool).await?;
    measured
}

/// The log relay's figures: drain rates and latencies, table mode then WAL mode.
pub(crate) struct Figures {
    pub(crate) drain_table: f64,
    pub(crate) drain_wal: f64,
    pub(crate) table: (f64, f64),
    pub(crate) wal: (f64, f64),
}

pub(crate) async fn measure(pool: &PgPool) -> Result<Figures, Box<dyn std::error::Error>> {
    Ok(Figures {
        drain_table: drain(pool, false).await?,
        drain_wal: drain(pool, true).await?,
        table: latency(pool, false).await?,
        wal: latency(pool, true).await?,
    })
}
