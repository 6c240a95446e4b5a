//! `relay-mariadb`: events per second from a preloaded MariaDB/MySQL table into the in-process
//! sink with 1, 2 and 4 relays, against the database alone claiming (`SKIP LOCKED`) and deleting
//! the same rows; and the deadlocks InnoDB broke meanwhile (`Innodb_deadlocks`), which several
//! relays sharing one table should not cause.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use outbox::relay::Relay;
use outbox::{Outbox, TableName};
use sqlx::{AssertSqlSafe, MySqlPool};

use crate::relay::{Observed, in_process};

const TABLE: &str = "outbox_bench_relay";
const EVENTS: i64 = 100_000;
const AGGREGATES: i64 = 10_000;
const BATCH: usize = 1_000;

fn outbox() -> Outbox {
    Outbox::for_table(TableName::from_static(TABLE))
}

/// `EVENTS` events over `AGGREGATES` aggregates in a freshly emptied table (MariaDB's sequence
/// engine numbers them; MySQL has a recursive CTE instead).
async fn preload(pool: &MySqlPool) -> Result<(), Box<dyn std::error::Error>> {
    outbox().migrate(pool).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {TABLE}")))
        .execute(pool)
        .await?;
    let sql = format!(
        "INSERT INTO {TABLE} (id, aggregate_type, aggregate_id, event_type, payload) \
         SELECT UUID(), 'account', CONCAT('acc-', seq % {AGGREGATES}), 'Numbered', JSON_OBJECT('n', seq) \
         FROM seq_1_to_{EVENTS}"
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(pool).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE TABLE {TABLE}")))
        .execute(pool)
        .await?;
    Ok(())
}

/// The database alone: in `READ COMMITTED`, claim `BATCH` rows with `SKIP LOCKED`, delete
/// them, commit; until empty.
async fn baseline(pool: &MySqlPool) -> Result<f64, Box<dyn std::error::Error>> {
    preload(pool).await?;
    let claim = format!(
        "SELECT CAST(seq AS SIGNED) FROM {TABLE} ORDER BY seq LIMIT {BATCH} FOR UPDATE SKIP LOCKED"
    );
    let start = Instant::now();
    let mut total = 0;
    loop {
        let mut tx = pool
            .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
            .await?;
        let seqs: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(claim.as_str()))
            .fetch_all(&mut *tx)
            .await?;
        if seqs.is_empty() {
            break;
        }
        let list = seqs
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DELETE FROM {TABLE} WHERE seq IN ({list})"
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        total += seqs.len();
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// InnoDB's count of deadlocks it broke, server-wide.
async fn deadlocks(pool: &MySqlPool) -> Result<i64, sqlx::Error> {
    let (_, value): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
        .fetch_one(pool)
        .await?;
    Ok(value.parse().unwrap_or(0))
}

/// Events per second through `relays` relays in this process, and the deadlocks meanwhile.
async fn throughput(
    pool: &MySqlPool,
    relays: usize,
) -> Result<(f64, i64), Box<dyn std::error::Error>> {
    preload(pool).await?;
    let before = deadlocks(pool).await?;
    let delivered = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let running: Vec<_> = (0..relays)
        .map(|_| {
            let sink = Observed::counting(in_process(), delivered.clone());
            let relay = Relay::builder(pool.clone(), sink)
                .outbox(&outbox())
                .batch_size(BATCH)
                .build();
            tokio::spawn(relay.run(std::future::pending()))
        })
        .collect();
    while delivered.load(AtomicOrdering::Relaxed) < EVENTS as usize {
        if start.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "{relays} relays delivered {} of {EVENTS} events in 5 minutes",
                delivered.load(AtomicOrdering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
    for relay in running {
        relay.abort();
    }
    Ok((rate, deadlocks(pool).await? - before))
}

/// Prints the table.
pub(crate) async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(20)
        .connect(url)
        .await
        .map_err(|e| {
            format!("cannot reach MariaDB at {url}: {e} (start it with scripts/services.sh)")
        })?;
    let base = baseline(&pool).await?;
    println!(
        "### relay throughput on MariaDB/MySQL: {EVENTS} preloaded events of {AGGREGATES} aggregates, in-process sink, batches of {BATCH}\n"
    );
    println!("| what | events/s | ratio to the database alone | deadlocks |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| database alone: claim {BATCH} with SKIP LOCKED + delete | {base:.0} | 1.000 | |");
    let mut summary = Vec::new();
    for relays in [1, 2, 4] {
        let (rate, deadlocks) = throughput(&pool, relays).await?;
        let ratio = rate / base;
        println!(
            "| relay, {relays} instance{} | {rate:.0} | {ratio:.3} | {deadlocks} |",
            if relays == 1 { "" } else { "s" }
        );
        summary.push(format!(
            "events_per_s_{relays}={rate:.0} deadlocks_{relays}={deadlocks}"
        ));
    }
    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {TABLE}")))
        .execute(&pool)
        .await?;
    println!("\nsummary: {}", summary.join(" "));
    Ok(())
}
