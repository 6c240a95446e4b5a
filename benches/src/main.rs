//! outbox benchmarks. Each scenario measures the library against a baseline in the same run and
//! prints a markdown table, then one `summary:` line.
//!
//! ```text
//! cargo run --release -p outbox-bench -- write   # the cost the outbox adds to a business transaction
//! cargo run --release -p outbox-bench -- relay   # relay throughput and commit-to-publish latency
//! cargo run --release -p outbox-bench -- relay-scale   # 1, 2, 4 relays and hot aggregates, medians
//! cargo run --release -p outbox-bench -- sink nats   # the same into a real broker: nats, redis,
//!                                                    # kafka, rabbitmq, mqtt or webhook
//! cargo run --release -p outbox-bench -- sink all    # every sink, then one table of them all
//! ```
//!
//! PostgreSQL comes from `OUTBOX_BENCH_POSTGRES_URL` (else `OUTBOX_TEST_POSTGRES_URL`, else the
//! local server). `OUTBOX_BENCH_SECONDS` sets the length of one measurement (default 2) and
//! `OUTBOX_BENCH_ROUNDS` the number of interleaved rounds (default 5). For `relay`,
//! `OUTBOX_BENCH_POLL_MS` overrides the relay's poll interval and `OUTBOX_BENCH_DEBUG` prints the
//! latency quantiles and the gaps between publishes.

mod log;
mod mariadb;
mod relay;
mod sink;
mod traced;

use std::time::{Duration, Instant};

use outbox::{Outbox, OutboxEvent, TableName, outbox_event};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

const BENCH_OUTBOX: Outbox = Outbox::for_table(TableName::from_static("outbox_bench"));
const NOTIFY_OUTBOX: Outbox =
    Outbox::for_table(TableName::from_static("outbox_bench_notify")).notify_on_commit(true);
/// The lean table of a relay tailing the log: no claim index, no trigger.
const LOG_OUTBOX: Outbox =
    Outbox::for_table(TableName::from_static("outbox_bench_lean")).log_tailing();
/// No row at all: a logical decoding message.
const WAL_OUTBOX: Outbox =
    Outbox::for_table(TableName::from_static("outbox_bench_wal")).wal_messages();

/// A business row like the bank's: what a service writes, and the event it emits.
#[derive(Serialize, sqlx::FromRow, OutboxEvent)]
#[outbox(aggregate_type = "account", event_type = "AccountOpened")]
struct Account {
    #[outbox(aggregate_id)]
    id: i64,
    owner: String,
    balance_cents: i64,
}

#[derive(Debug)]
enum BenchError {
    Database(#[allow(dead_code)] sqlx::Error),
    Outbox(#[allow(dead_code)] outbox::Error),
}

impl From<sqlx::Error> for BenchError {
    fn from(e: sqlx::Error) -> Self {
        BenchError::Database(e)
    }
}

impl From<outbox::Error> for BenchError {
    fn from(e: outbox::Error) -> Self {
        BenchError::Outbox(e)
    }
}

const INSERT: &str = "INSERT INTO bench_accounts (owner, balance_cents) VALUES ($1, $2) RETURNING id, owner, balance_cents";

/// The baseline's business write.
async fn insert_account(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
) -> Result<Account, BenchError> {
    Ok(sqlx::query_as(INSERT)
        .bind(owner)
        .bind(100_i64)
        .fetch_one(&mut **tx)
        .await?)
}

/// The same write through the attribute: the event is recorded in the same transaction.
#[outbox_event(outbox = BENCH_OUTBOX)]
async fn open_account(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
) -> Result<Account, BenchError> {
    insert_account(tx, owner).await
}

/// The same into an outbox whose table notifies the relay on commit.
#[outbox_event(outbox = NOTIFY_OUTBOX)]
async fn open_account_notify(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
) -> Result<Account, BenchError> {
    insert_account(tx, owner).await
}

/// The same into a log-tailed table.
#[outbox_event(outbox = LOG_OUTBOX)]
async fn open_account_log(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
) -> Result<Account, BenchError> {
    insert_account(tx, owner).await
}

/// The same as a WAL message.
#[outbox_event(outbox = WAL_OUTBOX)]
async fn open_account_wal(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
) -> Result<Account, BenchError> {
    insert_account(tx, owner).await
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `BEGIN; INSERT business row; COMMIT`.
    Plain,
    /// The same plus a bare `SELECT 1`: what any extra statement costs (the floor for an outbox
    /// written as its own statement, whatever the row).
    RoundTrip,
    /// The same through `#[outbox_event]`.
    Outbox,
    /// The same with `Outbox::notify_on_commit(true)`: a trigger sends `NOTIFY` at commit.
    OutboxNotify,
    /// The same into the lean table of `Outbox::log_tailing()`.
    OutboxLog,
    /// The same with `Outbox::wal_messages()`: no row.
    OutboxWal,
}

const MODES: [Mode; 6] = [
    Mode::Plain,
    Mode::RoundTrip,
    Mode::Outbox,
    Mode::OutboxNotify,
    Mode::OutboxLog,
    Mode::OutboxWal,
];

/// Committed transactions per second of `clients` concurrent clients for `duration`.
async fn measure(pool: &PgPool, mode: Mode, clients: usize, duration: Duration) -> f64 {
    let deadline = Instant::now() + duration;
    let workers = (0..clients).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut done = 0_u64;
            while Instant::now() < deadline {
                let mut tx = pool.begin().await.expect("begin");
                match mode {
                    Mode::Plain => insert_account(&mut tx, "bench").await.map(drop),
                    Mode::RoundTrip => {
                        let written = insert_account(&mut tx, "bench").await.map(drop);
                        sqlx::query("SELECT 1")
                            .execute(&mut *tx)
                            .await
                            .expect("SELECT 1");
                        written
                    }
                    Mode::Outbox => open_account(&mut tx, "bench").await.map(drop),
                    Mode::OutboxNotify => open_account_notify(&mut tx, "bench").await.map(drop),
                    Mode::OutboxLog => open_account_log(&mut tx, "bench").await.map(drop),
                    Mode::OutboxWal => open_account_wal(&mut tx, "bench").await.map(drop),
                }
                .expect("business write");
                tx.commit().await.expect("commit");
                done += 1;
            }
            done
        })
    });
    let start = Instant::now();
    let mut total = 0;
    for worker in workers.collect::<Vec<_>>() {
        total += worker.await.expect("worker");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn write(pool: &PgPool) -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = env_or("OUTBOX_BENCH_SECONDS", 2.0);
    let rounds: usize = env_or("OUTBOX_BENCH_ROUNDS", 5);
    drop_write_tables(pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_accounts (id BIGSERIAL PRIMARY KEY, owner TEXT NOT NULL, balance_cents BIGINT NOT NULL);",
    )
    .execute(pool)
    .await?;
    for outbox in [&BENCH_OUTBOX, &NOTIFY_OUTBOX, &LOG_OUTBOX, &WAL_OUTBOX] {
        outbox.migrate(pool).await?;
    }

    println!("## write: the cost `#[outbox_event]` adds to a business transaction\n");
    println!(
        "PostgreSQL, committed transactions per second, medians of {rounds} interleaved rounds of {seconds}s. \
         *plain*: `BEGIN; INSERT; COMMIT`. *+SELECT 1*: the same plus one bare statement, the floor \
         for any event written as its own statement. *outbox*: the same through `#[outbox_event]`. \
         *+notify*: the same into a table with `notify_on_commit(true)`. *log table*: the lean \
         table of `log_tailing()` (no claim index, no trigger). *WAL*: `wal_messages()`, no row. \
         Ratios are to *plain*.\n"
    );
    println!(
        "| clients | plain tx/s | +SELECT 1 tx/s | outbox tx/s | +notify tx/s | log table tx/s | WAL tx/s \
         | outbox | floor (+SELECT 1) | +notify | log table | WAL |"
    );
    println!(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut ratios = Vec::new();
    for clients in [1, 16] {
        let mut rates: [Vec<f64>; 6] = Default::default();
        // Warm up connections and statement caches, then rotate which mode goes first.
        for mode in MODES {
            measure(pool, mode, clients, Duration::from_millis(300)).await;
        }
        for round in 0..rounds {
            sqlx::raw_sql(
                "TRUNCATE bench_accounts, outbox_bench, outbox_bench_notify, outbox_bench_lean",
            )
            .execute(pool)
            .await?;
            for i in 0..MODES.len() {
                let index = (round + i) % MODES.len();
                let rate = measure(
                    pool,
                    MODES[index],
                    clients,
                    Duration::from_secs_f64(seconds),
                )
                .await;
                rates[index].push(rate);
            }
        }
        let [plain, round_trip, outbox, notify, log, wal] = rates.map(|mut r| median(&mut r));
        let ratio = outbox / plain;
        println!(
            "| {clients} | {plain:.0} | {round_trip:.0} | {outbox:.0} | {notify:.0} | {log:.0} | {wal:.0} \
             | {ratio:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            round_trip / plain,
            notify / plain,
            log / plain,
            wal / plain,
        );
        ratios.push((ratio, round_trip / plain, log / plain, wal / plain));
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_bench")
        .fetch_one(pool)
        .await?;
    println!(
        "\n(last round left {rows} outbox rows: every annotated transaction recorded its event)"
    );
    let (r16, floor16, log16, wal16) = ratios[1];
    println!(
        "summary: ratio_1={:.3} ratio_16={r16:.3} floor_16={floor16:.3} ratio_log_16={log16:.3} \
         ratio_wal_16={wal16:.3} wal_to_floor_16={:.3}",
        ratios[0].0,
        wal16 / floor16
    );
    drop_write_tables(pool).await?;
    Ok(())
}

/// The write benchmark's tables, and the publications and slots of its log-tailed outboxes
/// (a slot left behind would keep WAL forever).
async fn drop_write_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    for name in ["outbox_bench_lean", "outbox_bench_wal"] {
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
        )
        .bind(format!("{name}_relay"))
        .execute(pool)
        .await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP PUBLICATION IF EXISTS {name}_pub"
        )))
        .execute(pool)
        .await?;
    }
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_accounts, outbox_bench, outbox_bench_notify, outbox_bench_lean, outbox_bench_wal",
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    if scenario == "relay-mariadb" {
        let url = std::env::var("OUTBOX_BENCH_MYSQL_URL")
            .or_else(|_| std::env::var("OUTBOX_TEST_MYSQL_URL"))
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
        return mariadb::run(&url).await;
    }
    let url = std::env::var("OUTBOX_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("OUTBOX_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await
        .map_err(|e| {
            format!("cannot reach PostgreSQL at {url}: {e} (start it with scripts/services.sh)")
        })?;
    match scenario.as_str() {
        "write" => write(&pool).await,
        "relay" => relay_and_log(&pool).await,
        "relay-scale" => relay::run_scale(&pool).await,
        "traced" => traced::run(&pool).await,
        "sink" => match std::env::args().nth(2) {
            Some(name) if name == "all" => sink::run_all(&pool).await,
            Some(name) => sink::run(&pool, &name).await.map(drop),
            None => Err(format!("which sink? `sink <name>`, name one of: {}", sink::NAMES).into()),
        },
        other => Err(format!(
            "unknown scenario {other:?}; available: write, relay, relay-scale, relay-mariadb, sink <name>, traced"
        )
        .into()),
    }
}

/// `outbox-bench relay`: the polling relay's scaling and latency, then the log relay's
/// sources in the same run (here, above both benches, so that neither imports the other).
async fn relay_and_log(pool: &PgPool) -> Result<(), Box<dyn std::error::Error>> {
    let scaled = relay::scale(pool, 1).await?;
    let one = scaled.one;

    let seconds = relay::latency_seconds();
    let (p50, p99) = relay::latency(pool, relay::in_process(), false, 1_000, seconds).await?;
    let (n50, n99) = relay::latency(pool, relay::in_process(), true, 1_000, seconds).await?;
    println!(
        "\n### commit-to-publish latency at 1,000 events/s for {seconds}s (one writer, one relay)\n"
    );
    println!("| wake-up | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: |");
    println!("| polling every 25 ms (default) | {p50:.1} | {p99:.1} |");
    println!("| NOTIFY on commit (`notify_on_commit(true)`) | {n50:.1} | {n99:.1} |");
    relay::drop_table(pool).await?;

    let log = log::measure(pool).await?;
    println!(
        "\n### the relay's sources, same run: drain of {} events into the in-process sink, \
         and latency at 1,000 events/s\n",
        relay::EVENTS
    );
    println!("| source | drain events/s | ratio to polling | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!("| table, polling every 25 ms | {one:.0} | 1.000 | {p50:.1} | {p99:.1} |");
    println!("| table, NOTIFY on commit | - | - | {n50:.1} | {n99:.1} |");
    let (t50, t99) = log.table;
    let (w50, w99) = log.wal;
    println!(
        "| log, table rows (`log_tailing`) | {:.0} | {:.3} | {t50:.1} | {t99:.1} |",
        log.drain_table,
        log.drain_table / one
    );
    println!(
        "| log, WAL messages (`wal_messages`) | {:.0} | {:.3} | {w50:.1} | {w99:.1} |",
        log.drain_wal,
        log.drain_wal / one
    );
    println!(
        "\nsummary: {} p50_ms={p50:.1} p99_ms={p99:.1} \
         log_events_per_s={:.0} log_wal_events_per_s={:.0} log_p50_ms={t50:.1} log_p99_ms={t99:.1} \
         log_wal_p50_ms={w50:.1} log_wal_p99_ms={w99:.1}",
        scaled.summary(),
        log.drain_table,
        log.drain_wal
    );
    Ok(())
}
