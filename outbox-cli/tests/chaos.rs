//! The fault-injection run: 8 writers commit and roll back at random while three `outbox relay`
//! processes publish to NATS JetStream, and faults are thrown at them — relays SIGKILLed,
//! relays SIGSTOPped for 4 s then SIGCONTinued, their database connections terminated,
//! PostgreSQL restarted, the NATS server restarted (a server of the run's own, on its own port
//! and store, stopped by its pid), the relays' broker connections cut for 2 s
//! through a proxy. Then the relays drain and `outbox audit` compares the table with the
//! stream: nothing lost, no phantom, every aggregate in order, duplicates within the bound.
//! A second configuration publishes to Kafka instead: a tansu broker of the run's own,
//! advertising the proxy so that a cut reaches every connection. It keeps its log in memory, so
//! it is not restarted (a restart would lose what it holds: a broker's fault, not the relays');
//! every other fault is the same. A lighter run does the first on MariaDB, without restarting
//! the database.
//!
//! The PostgreSQL runs restart the shared PostgreSQL server, so they are ignored here and `scripts/test.sh` runs them alone,
//! in the step of tests that restart servers; by hand:
//! `cargo nextest run -p outbox-cli --all-features --run-ignored only -E 'test(chaos)'`.
//! `OUTBOX_CHAOS_SECONDS` sets how long faults are injected (default 60 on PostgreSQL with NATS;
//! the Kafka and MariaDB runs take half as long). Whatever happens, they leave PostgreSQL
//! running.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use outbox::{Event, Outbox, TableName};

const OUTBOX: &str = env!("CARGO_BIN_EXE_outbox");
const HINT: &str = "start the servers with scripts/services.sh";
const RELAYS: usize = 3;
const WRITERS: usize = 8;
const AGGREGATES: i32 = 64;
const BATCH: u64 = 50;

/// The MariaDB user the relays connect as, so that their connections can be told apart.
const MARIADB_RELAY_USER: &str = "outbox_chaos";

/// The database the writers and relays use, and the faults it takes.
#[derive(Clone)]
enum Db {
    Postgres(sqlx::PgPool),
    MariaDb(sqlx::MySqlPool),
}

impl Db {
    async fn postgres() -> Db {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(WRITERS as u32 + 2)
            .connect(&outbox_tests::postgres_url())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL: {e}; {HINT}"));
        Db::Postgres(pool)
    }

    async fn mariadb() -> Db {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(WRITERS as u32 + 2)
            .connect(&outbox_tests::mysql_url())
            .await
            .unwrap_or_else(|e| panic!("MariaDB: {e}; {HINT}"));
        let db = Db::MariaDb(pool);
        db.execute(format!(
            "CREATE USER IF NOT EXISTS '{MARIADB_RELAY_USER}'@'127.0.0.1' IDENTIFIED BY ''"
        ))
        .await;
        db.execute(format!(
            "GRANT ALL PRIVILEGES ON *.* TO '{MARIADB_RELAY_USER}'@'127.0.0.1'"
        ))
        .await;
        db
    }

    fn name(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "PostgreSQL",
            Db::MariaDb(_) => "MariaDB",
        }
    }

    /// The URL the relays connect with: on MariaDB, as their own user.
    fn relay_url(&self) -> String {
        match self {
            Db::Postgres(_) => outbox_tests::postgres_url(),
            Db::MariaDb(_) => {
                let url = outbox_tests::mysql_url();
                let host = url.split_once('@').map_or(url.as_str(), |(_, host)| host);
                format!(
                    "mysql://{MARIADB_RELAY_USER}@{}",
                    host.trim_start_matches("mysql://")
                )
            }
        }
    }

    async fn execute(&self, sql: String) {
        let sql = sqlx::AssertSqlSafe(sql);
        match self {
            Db::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
            Db::MariaDb(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        }
        .unwrap();
    }

    async fn migrate(&self, outbox: &Outbox) {
        match self {
            Db::Postgres(pool) => outbox.migrate(pool).await,
            Db::MariaDb(pool) => outbox.migrate(pool).await,
        }
        .unwrap();
    }

    async fn pending(&self, table: &str) -> Option<i64> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE published_at IS NULL"
        ));
        match self {
            Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Db::MariaDb(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .ok()
    }

    /// What ending the relays' connections is called on this database.
    fn terminate_name(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "pg_terminate_backend",
            Db::MariaDb(_) => "KILL CONNECTION",
        }
    }

    /// Ends every relay connection from the server's side; how many (-1: the query failed).
    async fn terminate_relays(&self) -> i64 {
        match self {
            Db::Postgres(pool) => sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name LIKE 'outbox-relay:chaos-%'",
            )
            .fetch_one(pool)
            .await
            .unwrap_or(-1),
            Db::MariaDb(pool) => {
                let Ok(ids) = sqlx::query_scalar::<_, i64>(
                    "SELECT id FROM information_schema.processlist WHERE user = ?",
                )
                .bind(MARIADB_RELAY_USER)
                .fetch_all(pool)
                .await
                else {
                    return -1;
                };
                let mut killed = 0;
                for id in ids {
                    // A connection that closed meanwhile is no reason to stop.
                    let kill = format!("KILL CONNECTION {id}");
                    if sqlx::raw_sql(sqlx::AssertSqlSafe(kill))
                        .execute(pool)
                        .await
                        .is_ok()
                    {
                        killed += 1;
                    }
                }
                killed
            }
        }
    }

    /// One writer's transaction on `aggregate`: locks its row (as a service updating it does),
    /// records a step, and commits, or rolls back when `commit` is false.
    async fn write(
        &self,
        outbox: &Outbox,
        counters: &str,
        aggregate: i32,
        commit: bool,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let event = |n: i64| {
            Event::new(
                "chaos",
                "Step",
                Some(format!("g{aggregate}")),
                &serde_json::json!({ "n": n }),
            )
        };
        match self {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "UPDATE {counters} SET n = n + 1 WHERE id = $1 RETURNING n"
                )))
                .bind(aggregate)
                .fetch_one(&mut *tx)
                .await?;
                outbox.record(&mut *tx, &event(n)?).await?;
                if commit {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
            }
            Db::MariaDb(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {counters} SET n = n + 1 WHERE id = ?"
                )))
                .bind(aggregate)
                .execute(&mut *tx)
                .await?;
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT n FROM {counters} WHERE id = ?"
                )))
                .bind(aggregate)
                .fetch_one(&mut *tx)
                .await?;
                outbox.record(&mut *tx, &event(n)?).await?;
                if commit {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
            }
        }
        Ok(())
    }
}

/// Runs a shell command; whether it succeeded.
fn sh(command: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .is_ok_and(|status| status.success())
}

fn pg_ctlcluster(action: &str) -> bool {
    sh(&format!(
        "v=$(ls /etc/postgresql | sort -V | tail -n 1); \
         pg_ctlcluster --skip-systemctl-redirect \"$v\" main {action}"
    ))
}

/// The broker the relays publish to, and how it is restarted and audited.
enum Broker {
    /// A NATS server of the run's own (its port, its store), restarted by its pid.
    Nats(outbox_tests::NatsServer),
    /// A tansu broker of the run's own, behind the proxy, in memory: never restarted.
    Kafka(outbox_tests::Tansu),
}

impl Broker {
    fn nats() -> Broker {
        Broker::Nats(outbox_tests::NatsServer::start())
    }

    /// A tansu broker advertising `proxy`.
    fn kafka(proxy: std::net::SocketAddr) -> Broker {
        Broker::Kafka(outbox_tests::Tansu::start(outbox_tests::free_port(), proxy))
    }

    fn name(&self) -> &'static str {
        match self {
            Broker::Nats { .. } => "NATS JetStream",
            Broker::Kafka(_) => "Kafka (tansu)",
        }
    }

    /// Whether the run restarts it (`nats restart` in the list of faults).
    fn restarts(&self) -> bool {
        matches!(self, Broker::Nats { .. })
    }

    /// Where the proxy forwards to.
    fn addr(&self) -> std::net::SocketAddr {
        let port = match self {
            Broker::Nats(server) => server.port(),
            Broker::Kafka(tansu) => tansu.port(),
        };
        ([127, 0, 0, 1], port).into()
    }

    /// The URL the relays and the audit use, through `proxy`.
    fn url(&self, proxy: std::net::SocketAddr) -> String {
        match self {
            Broker::Nats { .. } => format!("nats://{proxy}"),
            Broker::Kafka(_) => proxy.to_string(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Broker::Nats { .. } => "nats",
            Broker::Kafka(_) => "kafka",
        }
    }

    /// Creates where `table`'s events go (`<table>.chaos`, their aggregate type being `chaos`),
    /// through `proxy`: a file-backed JetStream stream (it keeps its messages and its duplicate
    /// window across a restart) or a topic of three partitions. Returns its name, for the audit.
    async fn prepare(&self, table: &str, proxy: std::net::SocketAddr) -> String {
        match self {
            Broker::Nats { .. } => {
                let nats = async_nats::connect(proxy.to_string())
                    .await
                    .unwrap_or_else(|e| panic!("NATS: {e}; {HINT}"));
                let stream = table.to_uppercase();
                async_nats::jetstream::new(nats)
                    .create_stream(async_nats::jetstream::stream::Config {
                        name: stream.clone(),
                        subjects: vec![format!("{table}.>")],
                        duplicate_window: Duration::from_secs(600),
                        storage: async_nats::jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                stream
            }
            Broker::Kafka(_) => {
                let topic = format!("{table}.chaos");
                outbox_tests::kafka_topic(&proxy.to_string(), &topic, 3).await;
                topic
            }
        }
    }

    /// Stops the broker as a service manager does and starts it again (blocking).
    fn restart(&mut self) {
        if let Broker::Nats(server) = self {
            server.restart();
        }
    }
}

/// The relay processes, and what the run leaves behind whatever happens: every relay killed,
/// PostgreSQL running (the run's own broker ends with it).
struct Relays {
    children: Vec<Child>,
    config: std::path::PathBuf,
    broker: Broker,
}

impl Relays {
    fn spawn(&self, index: usize) -> Child {
        Command::new(OUTBOX)
            .arg("--config")
            .arg(&self.config)
            .args(["relay", "--instance-id", &format!("chaos-{index}")])
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("OUTBOX_DATABASE_URL")
            .env_remove("OUTBOX_SINK_URL")
            .env(
                "OUTBOX_LOG",
                std::env::var("OUTBOX_CHAOS_LOG").unwrap_or_else(|_| "outbox=error".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    fn signal(&self, index: usize, name: &str) {
        let pid = self.children[index].id();
        assert!(sh(&format!("kill -{name} {pid}")), "kill -{name} {pid}");
    }

    /// Relays that exited by themselves (they should not): restarted, and counted.
    fn revive(&mut self) -> u64 {
        let mut exits = 0;
        for index in 0..self.children.len() {
            if let Some(status) = self.children[index].try_wait().unwrap() {
                eprintln!("chaos: relay {index} exited by itself ({status}); restarted");
                exits += 1;
                let child = self.spawn(index);
                self.children[index] = child;
            }
        }
        exits
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        if !sh("pg_isready -q -h 127.0.0.1 -p 5432") {
            pg_ctlcluster("start");
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

#[derive(Default)]
struct Tally {
    committed: AtomicU64,
    rolled_back: AtomicU64,
    failed: AtomicU64,
}

/// One writer: a transaction per step on a random aggregate, committed or, one time in three,
/// rolled back. Errors (a restart, a terminated connection) are counted and the writer goes on.
async fn writer(db: Db, outbox: Outbox, counters: String, until: Instant, tally: Arc<Tally>) {
    while Instant::now() < until {
        let commit = fastrand::u8(0..3) != 0;
        let aggregate = fastrand::i32(0..AGGREGATES);
        match db.write(&outbox, &counters, aggregate, commit).await {
            Ok(()) if commit => tally.committed.fetch_add(1, Relaxed),
            Ok(()) => tally.rolled_back.fetch_add(1, Relaxed),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tally.failed.fetch_add(1, Relaxed)
            }
        };
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts PostgreSQL: run alone (see the module docs)"]
async fn chaos_run_loses_nothing_invents_nothing_and_keeps_order() {
    chaos(Db::postgres().await, |_| Broker::nats(), chaos_seconds()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts PostgreSQL: run alone (see the module docs)"]
async fn chaos_run_to_kafka_loses_nothing_invents_nothing_and_keeps_order() {
    chaos(Db::postgres().await, Broker::kafka, chaos_seconds() / 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a fault run that loads the machine for 30 s: run alone (see the module docs)"]
async fn chaos_run_on_mariadb_loses_nothing_invents_nothing_and_keeps_order() {
    chaos(Db::mariadb().await, |_| Broker::nats(), chaos_seconds() / 2).await;
}

/// How long faults are injected: `OUTBOX_CHAOS_SECONDS`, default 60.
fn chaos_seconds() -> u64 {
    std::env::var("OUTBOX_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// The run: faults for `seconds`, relays publishing to the broker `broker` makes given the
/// proxy's address.
async fn chaos(db: Db, broker: impl FnOnce(std::net::SocketAddr) -> Broker, seconds: u64) {
    let table = format!("chaos_{}", uuid::Uuid::now_v7().simple());
    let counters = format!("{table}_aggregates");
    let outbox = Outbox::for_table(TableName::new(table.clone()).unwrap());
    db.migrate(&outbox).await;
    db.execute(format!(
        "CREATE TABLE {counters} (id INT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0)"
    ))
    .await;
    let ids: Vec<String> = (0..AGGREGATES).map(|id| format!("({id})")).collect();
    db.execute(format!(
        "INSERT INTO {counters} (id) VALUES {}",
        ids.join(", ")
    ))
    .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker = broker(listener.local_addr().unwrap());
    let proxy = outbox_tests::Proxy::on(listener, broker.addr());
    let read = broker.prepare(&table, proxy.addr).await;

    let config = std::env::temp_dir().join(format!("{table}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"database_url = "{db}"
table = "{table}"

[relay]
batch_size = {BATCH}
poll_interval = "20ms"
retention = "1h"

[sink]
kind = "{kind}"
url = "{url}"
routing = "{table}.{{aggregate_type}}"
"#,
            db = db.relay_url(),
            kind = broker.kind(),
            url = broker.url(proxy.addr),
        ),
    )
    .unwrap();
    let mut relays = Relays {
        children: Vec::new(),
        config: config.clone(),
        broker,
    };
    for index in 0..RELAYS {
        let child = relays.spawn(index);
        relays.children.push(child);
    }

    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tally = Arc::new(Tally::default());
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            tokio::spawn(writer(
                db.clone(),
                outbox.clone(),
                counters.clone(),
                until,
                tally.clone(),
            ))
        })
        .collect();

    let mut faults: Vec<String> = Vec::new();
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    let (mut pg_restarts, mut broker_restarts, mut exits) = (0, 0, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every kind of fault, in a new random order each round; a server restarts at most twice.
    let mut round: Vec<u8> = Vec::new();
    while Instant::now() + Duration::from_secs(5) < until {
        exits += relays.revive();
        if round.is_empty() {
            round = (0..6).collect();
            fastrand::shuffle(&mut round);
        }
        let relay = fastrand::usize(0..RELAYS);
        let kind = match round.pop().unwrap_or(0) {
            3 if pg_restarts < 2 && matches!(db, Db::Postgres(_)) => "postgres restart",
            4 if broker_restarts < 2 && relays.broker.restarts() => "nats restart",
            0 | 3 => "relay SIGKILL",
            1 | 4 => "relay SIGSTOP 4s",
            2 => db.terminate_name(),
            _ => "broker connections cut 2s",
        };
        let at = started.elapsed().as_secs_f64();
        match kind {
            "relay SIGKILL" => {
                relays.signal(relay, "KILL");
                relays.children[relay].wait().unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let child = relays.spawn(relay);
                relays.children[relay] = child;
            }
            "relay SIGSTOP 4s" => {
                relays.signal(relay, "STOP");
                tokio::time::sleep(Duration::from_secs(4)).await;
                relays.signal(relay, "CONT");
            }
            "pg_terminate_backend" | "KILL CONNECTION" => {
                let terminated = db.terminate_relays().await;
                // Three relays keep connections open: a fault that ends none is no fault.
                assert!(
                    terminated > 0,
                    "{kind} ended no relay connection ({terminated})"
                );
                faults.push(format!("{at:7.1}s  {kind} ({terminated} connections)"));
                *counts.entry(kind).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1_000..2_500))).await;
                continue;
            }
            "postgres restart" => {
                pg_restarts += 1;
                assert!(
                    pg_ctlcluster("restart --mode fast"),
                    "pg_ctlcluster restart"
                );
            }
            "nats restart" => {
                broker_restarts += 1;
                tokio::task::block_in_place(|| relays.broker.restart());
            }
            _ => {
                proxy.cut();
                tokio::time::sleep(Duration::from_secs(2)).await;
                proxy.restore();
            }
        }
        let who = if kind.starts_with("relay") {
            format!(" (relay {relay})")
        } else {
            String::new()
        };
        faults.push(format!("{at:7.1}s  {kind}{who}"));
        *counts.entry(kind).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1_000..2_500))).await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    exits += relays.revive();

    // What was thrown at the relays, printed before the drain so that a failed run shows it.
    let interruptions: u64 = counts.values().sum();
    println!(
        "chaos run on {}: {seconds}s of faults, {WRITERS} writers over {AGGREGATES} aggregates, \
         {RELAYS} relays (batch {BATCH}) publishing to {}",
        db.name(),
        relays.broker.name()
    );
    println!(
        "writers: {} committed, {} rolled back, {} failed by a fault",
        tally.committed.load(Relaxed),
        tally.rolled_back.load(Relaxed),
        tally.failed.load(Relaxed)
    );
    println!("faults injected ({interruptions}):");
    for fault in &faults {
        println!("  {fault}");
    }
    for (kind, count) in &counts {
        println!("  {count:>3} x {kind}");
    }

    // Drain: every committed event published.
    let faults_ended = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut reported = Instant::now();
    loop {
        let left = db.pending(&table).await;
        if reported.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "chaos: {left:?} pending {:.0}s after the last fault",
                faults_ended.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        match left {
            Some(0) => break,
            left => assert!(
                Instant::now() < deadline,
                "the relays did not drain: {left:?} pending"
            ),
        }
        exits += relays.revive();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_in = faults_ended.elapsed();
    for index in 0..RELAYS {
        relays.signal(index, "TERM");
    }
    for child in &mut relays.children {
        child.wait().unwrap();
    }

    let audit = |json: bool| {
        let mut command = Command::new(OUTBOX);
        // The broker's URL is the configuration's (`sink.url`, through the proxy).
        command
            .arg("--config")
            .arg(&config)
            .args(["audit", "--read", &read]);
        if json {
            command.arg("--json");
        }
        command
            .env_remove("OUTBOX_DATABASE_URL")
            .env_remove("OUTBOX_SINK_URL")
            .output()
            .unwrap()
    };
    let table_output = audit(false);
    println!("audit:\n{}", String::from_utf8_lossy(&table_output.stdout));
    let json_output = audit(true);
    let report: serde_json::Value =
        serde_json::from_slice(&json_output.stdout).unwrap_or_else(|e| {
            panic!(
                "the audit's JSON ({e}): {}{}",
                String::from_utf8_lossy(&json_output.stdout),
                String::from_utf8_lossy(&json_output.stderr)
            )
        });

    println!("relays that exited by themselves: {exits}");
    println!(
        "drained {:.1}s after the last fault",
        drained_in.as_secs_f64()
    );
    assert!(
        table_output.status.success(),
        "the audit failed: {}",
        String::from_utf8_lossy(&table_output.stderr)
    );
    let field = |name: &str| report[name].as_u64().unwrap();
    assert!(
        field("committed") >= tally.committed.load(Relaxed),
        "{report}"
    );
    assert!(
        field("committed") > 1_000,
        "too few events for a meaningful run: {report}"
    );
    assert_eq!(
        (
            field("missing"),
            field("phantoms"),
            field("order_violations")
        ),
        (0, 0, 0),
        "{report}"
    );
    assert_eq!((field("pending"), field("dead")), (0, 0), "{report}");
    assert_eq!(field("delivered"), field("committed"), "{report}");
    // The documented bound: a fault that interrupts a relay between publishing and settling
    // makes it publish its batch again, so at most a batch per relay per fault.
    let bound = interruptions * RELAYS as u64 * BATCH;
    assert!(
        field("duplicates") <= bound,
        "{} duplicates over the bound {bound}",
        field("duplicates")
    );
    assert!(
        pg_restarts + broker_restarts > 0 || seconds < 20,
        "no server restart in the run"
    );

    drop(relays);
    db.execute(format!("DROP TABLE {table}")).await;
    db.execute(format!("DROP TABLE {counters}")).await;
}
