//! Shared setup of the integration tests: connections to the real databases (failing with a
//! message that says how to start a missing server), per-test isolation, and reading the outbox
//! back.
#![allow(missing_docs, clippy::unwrap_used)]

use std::future::Future;

use serde_json::Value;
use sqlx::{MySql, MySqlPool, PgPool, Postgres, Sqlite, SqlitePool};

/// The PostgreSQL test database: `OUTBOX_TEST_POSTGRES_URL`, default the local server.
pub fn postgres_url() -> String {
    std::env::var("OUTBOX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The MySQL/MariaDB test database: `OUTBOX_TEST_MYSQL_URL`, default the local server.
pub fn mysql_url() -> String {
    std::env::var("OUTBOX_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

const START_HINT: &str = "run `scripts/services.sh` (it starts or installs the test databases), \
     or set the URL variable to a server you run";

/// A unique prefix for the aggregate ids of one test, so that tests sharing a table (and running
/// in parallel processes) never see each other's rows.
pub fn run_id() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

/// One outbox row, read back in a dialect-neutral shape.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub seq: i64,
    pub id: uuid::Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: Value,
    pub attempts: i64,
    pub published: bool,
}

/// What each dialect's tests need from their database.
pub trait TestDb: Sized + Send + Sync + 'static {
    type Database: outbox::Dialect;
    const NAME: &'static str;
    /// `INSERT INTO test_accounts (id, owner) VALUES (<p1>, <p2>)` in the dialect's placeholders.
    const INSERT_ACCOUNT: &'static str;

    fn pool(&self) -> &sqlx::Pool<Self::Database>;
    fn connect() -> impl Future<Output = Self> + Send;
    /// Rows of `table` whose aggregate id starts with `prefix`, in `seq` order.
    fn outbox_rows(&self, table: &str, prefix: &str)
    -> impl Future<Output = Vec<OutboxRow>> + Send;
    /// Number of business rows whose id starts with `prefix`.
    fn accounts(&self, prefix: &str) -> impl Future<Output = i64> + Send;
    /// The database's URL, for a child process.
    fn url(&self) -> String;
    /// The value of a query returning one integer.
    fn scalar(&self, sql: String) -> impl Future<Output = i64> + Send;
    /// Runs statements that return nothing.
    fn execute(&self, sql: String) -> impl Future<Output = ()> + Send;
    /// Inserts `count` committed events into `table`: aggregate `agg-{i % aggregates}`,
    /// payload `{"n": i}`, in `n` order.
    fn preload(&self, table: &str, count: i64, aggregates: i64) -> impl Future<Output = ()> + Send;
}

/// [`TestDb::scalar`] and [`TestDb::execute`], the same SQL calls for every dialect.
macro_rules! plain_queries {
    () => {
        async fn scalar(&self, sql: String) -> i64 {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_one(&self.0)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }

        async fn execute(&self, sql: String) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&self.0)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    };
}

/// [`TestDb::preload`] for the dialects with `?` placeholders: multi-row inserts of 1,000.
async fn preload_in_chunks<DB: outbox::Dialect>(
    pool: &sqlx::Pool<DB>,
    table: &str,
    count: i64,
    aggregates: i64,
) where
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut start = 0;
    while start < count {
        let end = (start + 1_000).min(count);
        let rows = vec!["(?, 'test', ?, 'Numbered', ?)"; usize::try_from(end - start).unwrap()];
        let sql = format!(
            "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload) VALUES {}",
            rows.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for i in start..end {
            query = query
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(format!("agg-{}", i % aggregates))
                .bind(format!("{{\"n\": {i}}}"));
        }
        query
            .execute(&mut *pool.acquire().await.unwrap())
            .await
            .unwrap();
        start = end;
    }
}

async fn setup<DB: outbox::Dialect>(pool: &sqlx::Pool<DB>, ddl: &'static str)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    outbox::migrate(pool)
        .await
        .unwrap_or_else(|e| panic!("migrating the outbox table failed: {e}"));
    sqlx::raw_sql(ddl)
        .execute(&mut *pool.acquire().await.unwrap())
        .await
        .unwrap_or_else(|e| panic!("creating test_accounts failed: {e}"));
}

/// The row as the dialects' queries select it: the same column types everywhere.
#[derive(sqlx::FromRow)]
struct RawRow {
    seq: i64,
    id: String,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    payload: String,
    attempts: i64,
    published: i64,
}

impl From<RawRow> for OutboxRow {
    fn from(raw: RawRow) -> Self {
        OutboxRow {
            seq: raw.seq,
            id: raw
                .id
                .parse()
                .unwrap_or_else(|e| panic!("id {:?} is not a UUID: {e}", raw.id)),
            aggregate_type: raw.aggregate_type,
            aggregate_id: raw.aggregate_id,
            event_type: raw.event_type,
            payload: serde_json::from_str(&raw.payload)
                .unwrap_or_else(|e| panic!("payload is not JSON: {e}")),
            attempts: raw.attempts,
            published: raw.published != 0,
        }
    }
}

#[derive(Debug)]
pub struct Pg(PgPool);

impl TestDb for Pg {
    type Database = Postgres;
    const NAME: &'static str = "PostgreSQL";
    const INSERT_ACCOUNT: &'static str = "INSERT INTO test_accounts (id, owner) VALUES ($1, $2)";

    fn pool(&self) -> &PgPool {
        &self.0
    }

    async fn connect() -> Self {
        let url = postgres_url();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(60)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}; {START_HINT}"));
        setup(
            &pool,
            "CREATE TABLE IF NOT EXISTS test_accounts (id TEXT PRIMARY KEY, owner TEXT NOT NULL)",
        )
        .await;
        Pg(pool)
    }

    async fn outbox_rows(&self, table: &str, prefix: &str) -> Vec<OutboxRow> {
        let sql = format!(
            "SELECT seq, id::text AS id, aggregate_type, aggregate_id, event_type, payload::text AS payload, \
             attempts::int8 AS attempts, (published_at IS NOT NULL)::int::int8 AS published \
             FROM {table} WHERE aggregate_id LIKE $1 ORDER BY seq"
        );
        sqlx::query_as::<_, RawRow>(sqlx::AssertSqlSafe(sql))
            .bind(format!("{prefix}%"))
            .fetch_all(&self.0)
            .await
            .unwrap()
            .into_iter()
            .map(OutboxRow::from)
            .collect()
    }

    async fn accounts(&self, prefix: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM test_accounts WHERE id LIKE $1")
            .bind(format!("{prefix}%"))
            .fetch_one(&self.0)
            .await
            .unwrap()
    }

    plain_queries!();

    fn url(&self) -> String {
        postgres_url()
    }

    async fn preload(&self, table: &str, count: i64, aggregates: i64) {
        let sql = format!(
            "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload) \
             SELECT gen_random_uuid(), 'test', 'agg-' || (i % $2), 'Numbered', jsonb_build_object('n', i) \
             FROM generate_series(0, $1 - 1) AS i"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(count)
            .bind(aggregates)
            .execute(&self.0)
            .await
            .unwrap();
    }
}

#[derive(Debug)]
pub struct My(MySqlPool);

impl TestDb for My {
    type Database = MySql;
    const NAME: &'static str = "MariaDB/MySQL";
    const INSERT_ACCOUNT: &'static str = "INSERT INTO test_accounts (id, owner) VALUES (?, ?)";

    fn pool(&self) -> &MySqlPool {
        &self.0
    }

    async fn connect() -> Self {
        let url = mysql_url();
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(60)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach MariaDB/MySQL at {url}: {e}; {START_HINT}"));
        setup(
            &pool,
            "CREATE TABLE IF NOT EXISTS test_accounts (id VARCHAR(64) PRIMARY KEY, owner TEXT NOT NULL) ENGINE = InnoDB",
        )
        .await;
        My(pool)
    }

    async fn outbox_rows(&self, table: &str, prefix: &str) -> Vec<OutboxRow> {
        let sql = format!(
            "SELECT CAST(seq AS SIGNED) AS seq, id, aggregate_type, aggregate_id, event_type, \
             CAST(payload AS CHAR) AS payload, CAST(attempts AS SIGNED) AS attempts, \
             CAST(published_at IS NOT NULL AS SIGNED) AS published \
             FROM {table} WHERE aggregate_id LIKE ? ORDER BY seq"
        );
        sqlx::query_as::<_, RawRow>(sqlx::AssertSqlSafe(sql))
            .bind(format!("{prefix}%"))
            .fetch_all(&self.0)
            .await
            .unwrap()
            .into_iter()
            .map(OutboxRow::from)
            .collect()
    }

    async fn accounts(&self, prefix: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM test_accounts WHERE id LIKE ?")
            .bind(format!("{prefix}%"))
            .fetch_one(&self.0)
            .await
            .unwrap()
    }

    plain_queries!();

    fn url(&self) -> String {
        mysql_url()
    }

    async fn preload(&self, table: &str, count: i64, aggregates: i64) {
        preload_in_chunks(&self.0, table, count, aggregates).await;
    }
}

/// SQLite: a fresh database file per test, in WAL mode so readers do not block the writer.
#[derive(Debug)]
pub struct Lite(SqlitePool, #[allow(dead_code)] TempFile);

/// Removes the test's SQLite files when the test ends.
#[derive(Debug)]
pub struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl TestDb for Lite {
    type Database = Sqlite;
    const NAME: &'static str = "SQLite";
    const INSERT_ACCOUNT: &'static str = "INSERT INTO test_accounts (id, owner) VALUES (?, ?)";

    fn pool(&self) -> &SqlitePool {
        &self.0
    }

    async fn connect() -> Self {
        let path =
            std::env::temp_dir().join(format!("outbox-test-{}.db", uuid::Uuid::now_v7().simple()));
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .unwrap_or_else(|e| panic!("cannot open SQLite database {}: {e}", path.display()));
        setup(
            &pool,
            "CREATE TABLE IF NOT EXISTS test_accounts (id TEXT PRIMARY KEY, owner TEXT NOT NULL)",
        )
        .await;
        Lite(pool, TempFile(path))
    }

    async fn outbox_rows(&self, table: &str, prefix: &str) -> Vec<OutboxRow> {
        let sql = format!(
            "SELECT seq, id, aggregate_type, aggregate_id, event_type, payload, attempts, \
             published_at IS NOT NULL AS published FROM {table} WHERE aggregate_id LIKE ? ORDER BY seq"
        );
        sqlx::query_as::<_, RawRow>(sqlx::AssertSqlSafe(sql))
            .bind(format!("{prefix}%"))
            .fetch_all(&self.0)
            .await
            .unwrap()
            .into_iter()
            .map(OutboxRow::from)
            .collect()
    }

    async fn accounts(&self, prefix: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM test_accounts WHERE id LIKE ?")
            .bind(format!("{prefix}%"))
            .fetch_one(&self.0)
            .await
            .unwrap()
    }

    plain_queries!();

    fn url(&self) -> String {
        format!("sqlite://{}", self.1.0.display())
    }

    async fn preload(&self, table: &str, count: i64, aggregates: i64) {
        preload_in_chunks(&self.0, table, count, aggregates).await;
    }
}

/// An outbox table of its own for one relay test (a relay consumes its whole table), migrated;
/// dropped by [`RelayTable::drop_table`].
#[derive(Debug)]
pub struct RelayTable<D: TestDb> {
    pub db: D,
    pub pool: sqlx::Pool<D::Database>,
    pub outbox: outbox::Outbox,
    pub name: String,
}

impl<D: TestDb> RelayTable<D> {
    pub async fn new() -> Self {
        let db = D::connect().await;
        let name = format!("relay_{}", run_id());
        let outbox = outbox::Outbox::for_table(outbox::TableName::new(name.clone()).unwrap());
        outbox.migrate(db.pool()).await.unwrap();
        RelayTable {
            pool: db.pool().clone(),
            db,
            outbox,
            name,
        }
    }

    /// Inserts `count` committed events straight into the table: aggregate `agg-{i % aggregates}`,
    /// payload `{"n": i}`, in `n` order.
    pub async fn preload(&self, count: i64, aggregates: i64) {
        self.db.preload(&self.name, count, aggregates).await;
    }

    /// Events still in the table (pending or dead).
    pub async fn remaining(&self) -> i64 {
        self.count("published_at IS NULL").await
    }

    /// Rows of the table matching `condition`.
    pub async fn count(&self, condition: &str) -> i64 {
        self.db
            .scalar(format!(
                "SELECT count(*) FROM {} WHERE {condition}",
                self.name
            ))
            .await
    }

    /// Drops the table and the relays' journal beside it.
    pub async fn drop_table(self) {
        self.db.execute(format!("DROP TABLE {}", self.name)).await;
        self.db
            .execute(format!("DROP TABLE IF EXISTS {}_handling", self.name))
            .await;
    }
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: std::time::Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A TCP proxy on 127.0.0.1 in front of a server, for connection-loss tests: [`Proxy::cut`]
/// closes every connection through it and refuses new ones until [`Proxy::restore`];
/// [`Proxy::hold`] keeps what the server sends from its clients until [`Proxy::release`] (a
/// server that is slow to answer). Only the clients of this proxy are affected, so tests
/// running alongside keep their connections.
#[derive(Debug)]
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    held: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target` on a free port.
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, target)
    }

    /// A proxy to `target` listening with `listener`.
    pub fn on(listener: tokio::net::TcpListener, target: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (generation, watcher) = tokio::sync::watch::channel(0_u64);
        let (held, holding) = tokio::sync::watch::channel(false);
        let accepting = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !accepting.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let mut cut = watcher.clone();
                cut.mark_unchanged();
                let mut holding = holding.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_in, mut client_out) = client.split();
                    let (mut server_in, mut server_out) = server.into_split();
                    let upstream = tokio::io::copy(&mut client_in, &mut server_out);
                    let downstream = async {
                        let mut buffer = vec![0_u8; 64 * 1024];
                        loop {
                            let read = match server_in.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => read,
                            };
                            if holding.wait_for(|held| !*held).await.is_err()
                                || client_out.write_all(&buffer[..read]).await.is_err()
                            {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = upstream => {}
                        () = downstream => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            generation,
            held,
            task,
        }
    }

    /// Keeps what the server sends from its clients (their requests still reach it).
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets what the server sent through again.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Closes every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|generation| *generation += 1);
    }
}

/// A NATS sink routing to `<prefix>.<aggregate type>`, and a JetStream stream `<PREFIX>`
/// capturing those subjects (delete it with `sink.jetstream().delete_stream(...)`).
pub async fn nats_stream(
    prefix: &str,
) -> (
    outbox::sinks::nats::NatsSink,
    async_nats::jetstream::stream::Stream,
) {
    let url =
        std::env::var("OUTBOX_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let sink = outbox::sinks::nats::NatsSink::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}; start NATS with scripts/services.sh"))
        .routing(
            outbox::sinks::Routing::template(&format!("{prefix}.{{aggregate_type}}")).unwrap(),
        );
    let stream = sink
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: prefix.to_uppercase(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    (sink, stream)
}

/// The RabbitMQ test server: `OUTBOX_TEST_AMQP_URL`, default the local one.
pub fn amqp_url() -> String {
    std::env::var("OUTBOX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue bound to `exchange` (declared durable, topic), to read what the sink published.
pub async fn amqp_queue(exchange: &str) -> (lapin::Connection, lapin::Channel, String) {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ: {e}; start it with scripts/services.sh"));
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = queue.name().to_string();
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, channel, name)
}

/// The `n` of a test event's payload, `{"n": n}`.
pub fn n(message: &outbox::relay::Message) -> i64 {
    serde_json::from_str::<Value>(&message.payload)
        .ok()
        .and_then(|payload| payload["n"].as_i64())
        .unwrap_or_else(|| panic!("not a numbered test event: {}", message.payload))
}

/// Runs `relay` in a task; the returned sender stops it gracefully.
pub fn spawn<S, K>(
    relay: outbox::relay::Relay<S, K>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)
where
    S: outbox::relay::source::Source,
    K: outbox::relay::Sink,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// A poison event: the sink of [`Poison::sink`] fails the event numbered `poison`
/// (transiently, `cannot route event <n>`) until [`Poison::fix`], and records every `n` it
/// delivers, in order.
#[derive(Debug, Clone)]
pub struct Poison {
    poison: i64,
    fixed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delivered: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
}

impl Poison {
    pub fn new(poison: i64) -> Self {
        Poison {
            poison,
            fixed: Default::default(),
            delivered: Default::default(),
        }
    }

    pub fn sink(&self) -> impl outbox::relay::Sink {
        let this = self.clone();
        outbox::relay::HandlerSink::new(move |message: outbox::relay::Message| {
            let this = this.clone();
            async move {
                let n = n(&message);
                if n == this.poison && !this.fixed.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(outbox::relay::SinkError::transient(format!(
                        "cannot route event {n}"
                    )));
                }
                this.delivered.lock().expect("lock").push(n);
                Ok(())
            }
        })
    }

    /// From now on the sink delivers the poison event too.
    pub fn fix(&self) {
        self.fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// What was delivered so far, in order.
    pub fn delivered(&self) -> Vec<i64> {
        self.delivered.lock().expect("lock").clone()
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker (the Kafka protocol, in memory) of a test's own on `127.0.0.1:<listen>`,
/// advertising `advertised` to its clients — a [`Proxy`] in front of it, so that cutting the
/// proxy cuts every connection, Kafka clients reconnecting to the address the broker
/// advertises. Killed when dropped.
#[derive(Debug)]
pub struct Tansu {
    child: std::process::Child,
    listen: u16,
}

impl Tansu {
    /// Starts the broker and waits (up to 30 s) until it listens.
    pub fn start(listen: u16, advertised: std::net::SocketAddr) -> Tansu {
        let home = std::env::var("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo")
            });
        let installed = home.join("bin/tansu");
        let program = if installed.exists() {
            installed
        } else {
            "tansu".into()
        };
        let child = std::process::Command::new(&program)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{listen}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{advertised}"))
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; run `scripts/services.sh` (it installs tansu)",
                    program.display()
                )
            });
        let mut tansu = Tansu { child, listen };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            if let Some(status) = tansu.child.try_wait().unwrap() {
                panic!("tansu exited ({status}) before listening on {listen}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tansu did not listen on {listen} within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tansu
    }

    /// The port the broker listens on (the proxy's target).
    pub fn port(&self) -> u16 {
        self.listen
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A NATS server with JetStream of a test's own: its own port and its own store directory, so
/// that a test that restarts it never touches the machine's server on 4222 (or anyone else's).
/// [`NatsServer::restart`] stops it by its pid, as a service manager does (SIGTERM), and starts
/// it again on the same port and store. Killed, and its directory removed, when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: std::process::Child,
    port: u16,
    store: std::path::PathBuf,
}

impl NatsServer {
    /// Starts a server on a free port and waits (up to 30 s) until it listens.
    pub fn start() -> NatsServer {
        let port = free_port();
        let store = std::env::temp_dir().join(format!("outbox-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&store).unwrap();
        let child = Self::spawn(port, &store);
        let mut server = NatsServer { child, port, store };
        server.wait_listening();
        server
    }

    fn spawn(port: u16, store: &std::path::Path) -> std::process::Child {
        let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or("nats-server");
        std::process::Command::new(program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program}: {e}; run `scripts/services.sh` (it installs nats-server)")
            })
    }

    fn wait_listening(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "nats-server exited ({status}) before listening on {}",
                    self.port
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on {} within 30 s",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server with SIGTERM, sent to its own pid, waits for it to exit, and starts it
    /// again on the same port with the same store (blocking).
    pub fn restart(&mut self) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|status| status.success());
        assert!(sent, "kill -TERM {pid}");
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, &self.store);
        self.wait_listening();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Creates Kafka topic `topic` with `partitions` partitions at `bootstrap`.
pub async fn kafka_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use outbox::sinks::kafka::rdkafka;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10))),
        )
        .await
        .unwrap_or_else(|e| {
            panic!("Kafka on {bootstrap}: {e}; run `scripts/services.sh` (it starts the brokers)")
        });
    for result in results {
        result.unwrap();
    }
}

/// The PostgreSQL test database, but with sessions that answer `version()` as CockroachDB v24.1
/// does: a function `crdb_lookalike.version()` searched before `pg_catalog`. CockroachDB cannot
/// be installed here; this is how the tests reach the code paths that detect it (the relay's
/// refusal, `migrate`'s choice of DDL). Nothing else about the server changes.
pub async fn cockroach_lookalike_url() -> String {
    let url = postgres_url();
    let pool = PgPool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}; {START_HINT}"));
    let mut tx = pool.begin().await.unwrap();
    // Tests creating it at once would collide on the catalog: one at a time.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('crdb_lookalike'))")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS crdb_lookalike;
         CREATE OR REPLACE FUNCTION crdb_lookalike.version() RETURNS text LANGUAGE sql AS
           $$ SELECT 'CockroachDB CCL v24.1.5 (x86_64-pc-linux-gnu, built 2024/09/12 18:02:47, go1.22.5 X:nocoverageredesign)'::text $$",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    pool.close().await;
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3Dcrdb_lookalike,pg_catalog,public")
}

/// The README's and the guide's Rust blocks, compiled (and, where they need no server, run) as
/// doc tests of this crate by the test command: what a reader copies builds.
#[cfg(doctest)]
pub mod guide {
    #[doc = include_str!("../../README.md")]
    pub struct Readme;
    #[doc = include_str!("../../docs/record.md")]
    pub struct Record;
    #[doc = include_str!("../../docs/relay.md")]
    pub struct Relay;
    #[doc = include_str!("../../docs/sinks.md")]
    pub struct Sinks;
    #[doc = include_str!("../../docs/inbox.md")]
    pub struct Inbox;
    #[doc = include_str!("../../docs/operate.md")]
    pub struct Operate;
    #[doc = include_str!("../../docs/log-tailing.md")]
    pub struct LogTailing;
    #[doc = include_str!("../../docs/cockroachdb.md")]
    pub struct Cockroachdb;
    #[doc = include_str!("../../docs/observability.md")]
    pub struct Observability;
    #[doc = include_str!("../../docs/reference.md")]
    pub struct Reference;
}
