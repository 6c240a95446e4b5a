//! The real `outbox` binary against the real PostgreSQL and NATS: migrate, status, a relay
//! child process stopped with SIGTERM and killed with SIGKILL, metrics, dead letters, and every
//! error a user can make, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::{Event, Outbox, TableName};
use outbox_tests::free_port;

const OUTBOX: &str = env!("CARGO_BIN_EXE_outbox");
const HINT: &str = "start the servers with scripts/services.sh";

fn postgres_url() -> String {
    std::env::var("OUTBOX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn nats_url() -> String {
    std::env::var("OUTBOX_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Runs `outbox` with `args` and the database URL in the environment.
fn outbox(args: &[&str]) -> Output {
    Command::new(OUTBOX)
        .args(args)
        .env("OUTBOX_DATABASE_URL", postgres_url())
        .env_remove("OUTBOX_CONFIG")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `outbox status --json`, as (pending, dead) over all rows.
fn status(table: &str) -> (i64, i64) {
    let output = outbox(&["--table", table, "status", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = status["events"].as_array().unwrap();
    rows.iter().fold((0, 0), |(pending, dead), row| {
        (
            pending + row["pending"].as_i64().unwrap(),
            dead + row["dead"].as_i64().unwrap(),
        )
    })
}

async fn record(table: &str, count: i64) {
    let pool = sqlx::PgPool::connect(&postgres_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL: {e}; {HINT}"));
    let outbox = Outbox::for_table(TableName::new(table).unwrap());
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let mut tx = pool.begin().await.unwrap();
        for n in chunk {
            let event = Event::new(
                "account",
                "Deposited",
                Some(format!("acc-{}", n % 20)),
                &serde_json::json!({ "n": n }),
            )
            .unwrap();
            outbox.record(&mut *tx, &event).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
}

/// A relay configuration for `table` into NATS subjects `<table>.<aggregate_type>`.
fn relay_config(table: &str, port: u16) -> std::path::PathBuf {
    relay_config_with(table, port, "")
}

/// [`relay_config`] with `relay` as more lines of its `[relay]` section.
fn relay_config_with(table: &str, port: u16, relay: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{table}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"# outbox relay configuration
database_url = "{db}"
table = "{table}"
instance_id = "test-relay"

[relay]
batch_size = 50
poll_interval = "20ms"
{relay}

[sink]
kind = "nats"
url = "{nats}"
routing = "{table}.{{aggregate_type}}"

[http]
listen = "127.0.0.1:{port}"
"#,
            db = postgres_url(),
            nats = nats_url(),
        ),
    )
    .unwrap();
    path
}

fn start_relay(config: &std::path::Path) -> Child {
    Command::new(OUTBOX)
        .arg("--config")
        .arg(config)
        .arg("relay")
        .env_remove("OUTBOX_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn stream_for(table: &str) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect(nats_url())
        .await
        .unwrap_or_else(|e| panic!("NATS: {e}; {HINT}"));
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: table.to_uppercase(),
            subjects: vec![format!("{table}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// `relay.tables`: one `outbox relay` for the outbox table of each of three tenant schemas,
/// found by a pattern; `outbox status` shows each table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_service_serves_the_tables_a_pattern_finds() {
    let prefix = unique("cli_mt");
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    for t in 0..3 {
        let table = format!("{prefix}_{t}.outbox");
        let outbox = Outbox::for_table(TableName::new(table).unwrap());
        outbox.migrate(&pool).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        for n in 0..5 {
            let event = outbox::Event::new(
                "tenant",
                "Numbered",
                Some(t),
                &serde_json::json!({ "n": n }),
            )
            .unwrap();
            outbox.record(&mut *tx, &event).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let mut stream = stream_for(&prefix).await;
    let port = free_port();
    let config = relay_config_with(&prefix, port, &format!("tables = \"{prefix}_*.outbox\""));
    let mut relay = KillOnDrop(start_relay(&config));
    let until = Instant::now() + Duration::from_secs(30);
    while messages(&mut stream).await < 15 {
        assert!(
            Instant::now() < until,
            "the three tables' 15 events were not published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&relay.0, "TERM");
    assert!(relay.0.wait().unwrap().success());
    let log = {
        let mut text = String::new();
        std::io::Read::read_to_string(relay.0.stderr.as_mut().unwrap(), &mut text).unwrap();
        text
    };
    assert!(
        log.contains(&format!(
            "3 tables: {prefix}_0.outbox, {prefix}_1.outbox, {prefix}_2.outbox"
        )),
        "{log}"
    );

    let output = Command::new(OUTBOX)
        .args(["--config", config.to_str().unwrap(), "status", "--json"])
        .env_remove("OUTBOX_DATABASE_URL")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let tables = status["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 3, "{status}");
    for (t, table) in tables.iter().enumerate() {
        assert_eq!(table["table"], format!("{prefix}_{t}.outbox"));
        let pending: i64 = table["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["pending"].as_i64().unwrap())
            .sum();
        assert_eq!(pending, 0, "{status}");
    }
    async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap())
        .delete_stream(prefix.to_uppercase())
        .await
        .unwrap();
    for t in 0..3 {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{prefix}_{t}\" CASCADE"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_service_drains_the_outbox_reports_metrics_and_stops_on_sigterm() {
    let table = unique("cli");
    let migrated = outbox(&["--table", &table, "migrate", "--no-inbox"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    assert_eq!(
        stdout(&migrated),
        format!("outbox table `{table}` is ready\n")
    );
    let mut stream = stream_for(&table).await;
    record(&table, 300).await;
    assert_eq!(status(&table), (300, 0));

    let port = free_port();
    let config = relay_config(&table, port);
    let mut relay = start_relay(&config);
    wait_for(
        "the relay to drain the outbox",
        Duration::from_secs(60),
        || status(&table).0 == 0,
    );
    let output = outbox(&["--table", &table, "status", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let relays = shown["relays"].as_array().unwrap();
    assert!(
        relays.iter().any(|relay| relay["instance"] == "test-relay"),
        "the running relay is not in the status: {shown}"
    );
    let (code, health) = http_get(port, "/health").await;
    assert_eq!((code, health.as_str()), (200, "ok\n"));
    let (code, metrics) = http_get(port, "/metrics").await;
    assert_eq!(code, 200);
    let published: f64 = metrics
        .lines()
        .find(|line| line.starts_with("outbox_events_published_total"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no published counter in:\n{metrics}"));
    assert!(published >= 300.0, "{metrics}");
    assert!(metrics.contains("instance=\"test-relay\""), "{metrics}");

    signal(&relay, "TERM");
    let exited = Instant::now();
    let status_code = relay.wait().unwrap();
    assert!(status_code.success(), "the relay exited with {status_code}");
    assert!(exited.elapsed() < Duration::from_secs(10));
    assert_eq!(stream.info().await.unwrap().state.messages, 300);
    std::fs::remove_file(config).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_service_killed_with_sigkill_loses_nothing() {
    let table = unique("cli");
    assert!(
        outbox(&["--table", &table, "migrate", "--no-inbox"])
            .status
            .success()
    );
    let mut stream = stream_for(&table).await;
    record(&table, 2_000).await;
    let config = relay_config(&table, free_port());
    let mut relay = start_relay(&config);
    wait_for("some events to be relayed", Duration::from_secs(60), || {
        status(&table).0 < 2_000
    });
    signal(&relay, "KILL");
    relay.wait().unwrap();
    let left = status(&table).0;
    assert!(
        left > 0,
        "the relay finished before it was killed; record more"
    );
    let mut relay = start_relay(&config);
    wait_for(
        "the restarted relay to drain",
        Duration::from_secs(60),
        || status(&table).0 == 0,
    );
    signal(&relay, "TERM");
    assert!(relay.wait().unwrap().success());
    // The batch in flight at the kill was published again; the stream's duplicate window
    // (`Nats-Msg-Id` = event id) kept one copy of each.
    assert_eq!(stream.info().await.unwrap().state.messages, 2_000);
    std::fs::remove_file(config).unwrap();
}

/// A relay process tailing the transaction log (`relay.source`), SIGKILLed three times while
/// it streams: no event lost, and `outbox status` shows the slot.
async fn log_relay_killed_with_sigkill_loses_nothing(source: &str) {
    let table = unique("cli_log");
    let config = relay_config(&table, free_port());
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("[relay]\n", &format!("[relay]\nsource = \"{source}\"\n"));
    std::fs::write(&config, text).unwrap();
    let config_arg = config.to_str().unwrap();
    let migrated = outbox(&["--config", config_arg, "migrate", "--no-inbox"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let mut stream = stream_for(&table).await;
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    let recorder = Outbox::for_table(TableName::new(table.clone()).unwrap());
    let recorder = if source == "log" {
        recorder.log_tailing()
    } else {
        recorder.wal_messages()
    };
    let total = 3_000;
    for chunk in (0..total).collect::<Vec<i64>>().chunks(50) {
        let mut tx = pool.begin().await.unwrap();
        for n in chunk {
            let payload = serde_json::json!({ "n": n });
            let event = Event::new(
                "account",
                "Deposited",
                Some(format!("acc-{}", n % 20)),
                &payload,
            )
            .unwrap();
            recorder.record(&mut *tx, &event).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    for _ in 0..3 {
        let before = messages(&mut stream).await;
        let mut relay = start_relay(&config);
        until(
            "the relay to publish more",
            Duration::from_secs(60),
            async || messages(&mut stream).await > before,
        )
        .await;
        signal(&relay, "KILL");
        relay.wait().unwrap();
    }
    assert!(
        messages(&mut stream).await < total as u64,
        "killed mid-stream; record more"
    );
    let mut relay = start_relay(&config);
    until(
        "the last relay to publish everything",
        Duration::from_secs(60),
        async || messages(&mut stream).await == total as u64,
    )
    .await;
    let status = outbox(&["--config", config_arg, "status", "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["slot"]["active"], true, "{status}");
    let slot = status["slot"]["slot"].as_str().unwrap().to_owned();
    signal(&relay, "TERM");
    assert!(relay.wait().unwrap().success());
    // The duplicate window (`Nats-Msg-Id` = event id) kept one copy of each redelivery.
    assert_eq!(messages(&mut stream).await, total as u64);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&pool)
        .await
        .unwrap();
    let publication = slot.replace("_relay", "_pub");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP PUBLICATION \"{publication}\"; DROP TABLE {table}"
    )))
    .execute(&pool)
    .await
    .unwrap();
    std::fs::remove_file(config).unwrap();
}

async fn messages(stream: &mut async_nats::jetstream::stream::Stream) -> u64 {
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_relay_of_table_rows_killed_with_sigkill_loses_nothing() {
    log_relay_killed_with_sigkill_loses_nothing("log").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_relay_of_wal_messages_killed_with_sigkill_loses_nothing() {
    log_relay_killed_with_sigkill_loses_nothing("wal-messages").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed() {
    let table = unique("cli");
    assert!(
        outbox(&["--table", &table, "migrate", "--no-inbox"])
            .status
            .success()
    );
    record(&table, 3).await;
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET dead_at = now(), attempts = 10, last_error = 'broker said no' \
         WHERE payload->>'n' IN ('0', '2')"
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(status(&table), (1, 2));

    let listed = outbox(&["--table", &table, "dead-letters", "list", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let letters: Vec<serde_json::Value> = stdout(&listed)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["last_error"], "broker said no");
    assert_eq!(letters[0]["payload"]["n"], 0);

    let filtered = outbox(&[
        "--table",
        &table,
        "dead-letters",
        "list",
        "--json",
        "--aggregate-id",
        "acc-2",
    ]);
    assert_eq!(
        stdout(&filtered).lines().count(),
        1,
        "{}",
        stdout(&filtered)
    );
    let old = outbox(&[
        "--table",
        &table,
        "dead-letters",
        "list",
        "--older-than",
        "3600",
    ]);
    assert_eq!(stdout(&old), "", "they died a moment ago");
    let one = letters[0]["id"].as_str().unwrap();
    let replayed = outbox(&["--table", &table, "dead-letters", "replay", one, "--yes"]);
    assert_eq!(
        stdout(&replayed),
        "1 dead letters replayed\n",
        "{}",
        stderr(&replayed)
    );
    assert_eq!(status(&table), (2, 1));
    // Without --yes, a "no" replays nothing.
    let mut asked = Command::new(OUTBOX)
        .args(["--table", &table, "dead-letters", "replay", "--all"])
        .env("OUTBOX_DATABASE_URL", postgres_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    asked.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let refused = asked.wait_with_output().unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).ends_with("outbox: error: nothing replayed\n"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(status(&table), (2, 1));
    let all = outbox(&[
        "--table",
        &table,
        "dead-letters",
        "replay",
        "--all",
        "--yes",
    ]);
    assert_eq!(stdout(&all), "1 dead letters replayed\n");
    assert_eq!(status(&table), (3, 0));

    // One dies again: shown in full, then purged for good.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET dead_at = now(), attempts = 10, last_error = 'refused: 422' \
         WHERE payload->>'n' = '1'"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let listed = outbox(&["--table", &table, "dead-letters", "list", "--json"]);
    let letter: serde_json::Value = serde_json::from_str(stdout(&listed).trim()).unwrap();
    let id = letter["id"].as_str().unwrap();
    let shown = outbox(&["--table", &table, "dead-letters", "show", id]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["last_error"], "refused: 422");
    assert_eq!(shown["payload"]["n"], 1);
    assert_eq!(shown["attempts"], 10);
    let unknown = uuid::Uuid::now_v7().to_string();
    let missing = outbox(&["--table", &table, "dead-letters", "show", &unknown]);
    assert_eq!(
        stderr(&missing),
        format!("outbox: error: no dead letter {unknown} in `{table}`\n")
    );
    let purged = outbox(&[
        "--table",
        &table,
        "dead-letters",
        "purge",
        "--event-type",
        "Deposited",
        "--yes",
    ]);
    assert_eq!(
        stdout(&purged),
        "1 dead letters deleted\n",
        "{}",
        stderr(&purged)
    );
    assert_eq!(status(&table), (2, 0));
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}

/// Runs `outbox` with exactly `env` and `args`; returns (exit code, stderr).
fn fails(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut command = Command::new(OUTBOX);
    command
        .args(args)
        .env_remove("OUTBOX_DATABASE_URL")
        .env_remove("OUTBOX_CONFIG");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "one line expected:\n{text}");
    (output.status.code().unwrap(), text)
}

#[test]
fn changefeed_mistakes_are_one_line_each() {
    let dir = std::env::temp_dir().join(unique("cf_mistakes"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = |body: &str| {
        let path = dir.join(format!("{}.toml", uuid::Uuid::now_v7().simple()));
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let sink = "[sink]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n";
    let cases = [
        (String::new(), "no sink: add a [sink] section"),
        (
            sink.to_owned(),
            "CockroachDB's webhook sink speaks only HTTPS: set changefeed.cert",
        ),
        (
            format!(
                "{sink}[changefeed]\ncert = \"/no/such/cert.pem\"\nkey = \"/no/such/key.pem\"\n"
            ),
            "changefeed.cert /no/such/cert.pem: ",
        ),
    ];
    for (body, expected) in cases {
        let path = config(&body);
        let (code, text) = fails(&[], &["--config", &path, "changefeed"]);
        assert_eq!(code, 2, "{text}");
        assert!(
            text.starts_with(&format!("outbox: error: {expected}")),
            "{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn changefeed_sql_prints_the_statements_for_the_configured_receiver() {
    let dir = std::env::temp_dir().join(unique("cf_sql"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("outbox.toml");
    std::fs::write(
        &config,
        "[changefeed]\npublic_url = \"https://relay.internal:8443/\"\nsecret = \"Bearer s3cret\"\n\
         row_ttl = \"2h\"\nmax_body_bytes = 104857600\n",
    )
    .unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--table",
            "app.outbox",
        ];
        args.extend_from_slice(&["changefeed-sql", "--ca-cert", ca.to_str().unwrap()]);
        args.extend_from_slice(extra);
        // No database: printing needs none.
        let output = Command::new(OUTBOX)
            .args(&args)
            .env_remove("OUTBOX_DATABASE_URL")
            .env_remove("OUTBOX_CHANGEFEED_SECRET")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let expected = |secret: &str| {
        format!(
            "SET CLUSTER SETTING kv.rangefeed.enabled = true;\n\n\
             ALTER TABLE \"app\".\"outbox\" SET (ttl_expiration_expression = '((created_at AT TIME ZONE ''UTC'') + INTERVAL ''7200 seconds'') AT TIME ZONE ''UTC''', ttl_job_cron = '@hourly', ttl_disable_changefeed_replication = true);\n\n\
             CREATE CHANGEFEED FOR TABLE \"app\".\"outbox\"\n  \
             INTO 'webhook-https://relay.internal:8443/?ca_cert=LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo%3D'\n  \
             WITH updated,\n       \
             resolved = '10s',\n       \
             min_checkpoint_frequency = '10s',\n       \
             schema_change_policy = 'nobackfill',\n       \
             initial_scan = 'yes',\n       \
             webhook_auth_header = '{secret}',\n       \
             webhook_sink_config = '{{\"Flush\": {{\"Messages\": 1000, \"Bytes\": 8979285, \"Frequency\": \"100ms\"}}, \"Retry\": {{\"Max\": \"inf\", \"Backoff\": \"500ms\"}}}}';\n\n"
        )
    };
    assert_eq!(run(&[]), expected("<redacted>"));
    assert_eq!(run(&["--show-secret"]), expected("Bearer s3cret"));
    // A cap too small for one escaped row of the largest payload: refused, with the size.
    std::fs::write(
        &config,
        "[changefeed]\npublic_url = \"https://relay.internal:8443/\"\nmax_body_bytes = 4194304\n",
    )
    .unwrap();
    let (code, text) = fails(
        &[],
        &["--config", config.to_str().unwrap(), "changefeed-sql"],
    );
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("changefeed.max_body_bytes: a body cap of 4194304 bytes cannot hold"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn changefeed_sql_and_the_relay_say_what_to_do_on_the_wrong_database() {
    let (code, text) = fails(&[], &["changefeed-sql"]);
    assert_eq!(code, 2);
    assert!(
        text.starts_with("outbox: error: no receiver URL: set changefeed.public_url"),
        "{text}"
    );
    let (code, text) = fails(
        &[],
        &["changefeed-sql", "--receiver-url", "http://relay:8443"],
    );
    assert_eq!(code, 2);
    assert!(
        text.contains("CockroachDB's webhook sink only speaks HTTPS"),
        "{text}"
    );
    let (code, text) = fails(
        &[],
        &[
            "changefeed-sql",
            "--receiver-url",
            "https://relay:8443",
            "--execute",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        text.starts_with("outbox: error: --execute needs the CockroachDB cluster"),
        "{text}"
    );
    let url = postgres_url();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &[
            "changefeed-sql",
            "--receiver-url",
            "https://relay:8443",
            "--execute",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        text.ends_with("is PostgreSQL, not CockroachDB: it has no changefeeds; publish with `outbox relay` (relay.source = \"table\" or \"log\")\n"),
        "{text}"
    );

    // The relay on CockroachDB (PostgreSQL answering `version()` as CockroachDB does): refused
    // before it starts, with where to go instead.
    let table = unique("cf_relay");
    let migrated = outbox(&["--table", &table, "migrate", "--no-inbox"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let lookalike = outbox_tests::cockroach_lookalike_url().await;
    let config = std::env::temp_dir().join(format!("{table}.toml"));
    std::fs::write(
        &config,
        "[sink]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n",
    )
    .unwrap();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &lookalike)],
        &[
            "--config",
            config.to_str().unwrap(),
            "--table",
            &table,
            "relay",
        ],
    );
    let _ = std::fs::remove_file(&config);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.starts_with(
            "outbox: error: the polling relay is not available on CockroachDB: publish with a \
             changefeed instead: `outbox changefeed-sql` prints the CREATE CHANGEFEED statement"
        ),
        "{text}"
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}

#[test]
fn every_mistake_is_one_line_that_says_what_to_fix() {
    assert_eq!(
        fails(&[], &["status"]),
        (
            2,
            "outbox: error: no database URL: set `database_url` in the configuration file, \
             OUTBOX_DATABASE_URL, or --database-url\n"
                .to_owned()
        )
    );
    assert_eq!(
        fails(&[], &["--database-url", "redis://127.0.0.1", "status"]),
        (
            2,
            "outbox: error: database URL \"redis://127.0.0.1\" is not postgres://, mysql:// or sqlite://\n"
                .to_owned()
        )
    );
    let (code, text) = fails(
        &[],
        &[
            "--database-url",
            "postgres://postgres@127.0.0.1:1/test",
            "status",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        text.starts_with("outbox: error: cannot connect to postgres://postgres@127.0.0.1:1/test: ")
            && text.contains("Connection refused"),
        "{text}"
    );
    let (code, text) = fails(
        &[],
        &[
            "--database-url",
            "mysql://root:wrong@127.0.0.1:3306/test",
            "status",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        text.starts_with("outbox: error: cannot connect to mysql://root:***@127.0.0.1:3306/test: ")
            && text.contains("Access denied"),
        "{text}"
    );
    let url = postgres_url();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--table", "no_such_outbox", "status"],
    );
    assert_eq!(code, 1);
    assert!(
        text.starts_with("outbox: error: outbox table `no_such_outbox` is not usable")
            && text.ends_with("create it with `outbox migrate`\n"),
        "{text}"
    );
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--table", "bad name", "status"],
    );
    assert_eq!(code, 2);
    assert!(
        text.starts_with("outbox: error: invalid outbox table name \"bad name\""),
        "{text}"
    );

    let config = std::env::temp_dir().join(format!("{}.toml", unique("bad")));
    std::fs::write(&config, "table = \"outbox\"\n[relay]\nbatchsize = 10\n").unwrap();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--config", config.to_str().unwrap(), "status"],
    );
    assert_eq!(code, 2);
    assert_eq!(
        text,
        format!(
            "outbox: error: {}:3: unknown field `batchsize`, expected one of `batch_size`, \
             `max_batch_bytes`, `max_attempts`, `poll_interval`, `delivery_timeout`, \
             `retention`, `ordering`, `source`, `replication_url`, `tables`\n",
            config.display()
        )
    );

    std::fs::write(
        &config,
        "table = \"outbox\"\n[relay]\nmax_batch_bytes = 0\n[sink]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n",
    )
    .unwrap();
    assert_eq!(
        fails(
            &[("OUTBOX_DATABASE_URL", &url)],
            &["--config", config.to_str().unwrap(), "relay"],
        ),
        (
            2,
            "outbox: error: relay.max_batch_bytes must be at least 1 (a batch always takes one \
             event)\n"
                .to_owned()
        )
    );

    // Durations read as humane strings and `ordering` is one of two words, checked on reading.
    for (setting, problem) in [
        (
            "ordering = \"sideways\"",
            "unknown variant `sideways`, expected `per-aggregate` or `unordered`",
        ),
        (
            "poll_interval = \"soon\"",
            "invalid value: string \"soon\", expected a duration",
        ),
        (
            "source = \"binlog\"",
            "unknown variant `binlog`, expected one of `table`, `log`, `wal-messages`",
        ),
    ] {
        std::fs::write(&config, format!("table = \"outbox\"\n[relay]\n{setting}\n")).unwrap();
        assert_eq!(
            fails(
                &[("OUTBOX_DATABASE_URL", &url)],
                &["--config", config.to_str().unwrap(), "status"],
            ),
            (
                2,
                format!("outbox: error: {}:3: {problem}\n", config.display())
            )
        );
    }
    std::fs::write(
        &config,
        "table = \"outbox\"\n[relay]\npoll_interval = \"25ms\"\nretention = \"1d\"\nordering = \"unordered\"\n",
    )
    .unwrap();
    // The configuration's table, created first: on a fresh database nothing else may have.
    let migrated = Command::new(OUTBOX)
        .args([
            "--config",
            config.to_str().unwrap(),
            "migrate",
            "--no-inbox",
        ])
        .env("OUTBOX_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let read = Command::new(OUTBOX)
        .args(["--config", config.to_str().unwrap(), "status"])
        .env("OUTBOX_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", stderr(&read));

    // Only PostgreSQL has a transaction log to tail.
    std::fs::write(&config, "table = \"outbox\"\n[relay]\nsource = \"log\"\n").unwrap();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", "sqlite://:memory:")],
        &[
            "--config",
            config.to_str().unwrap(),
            "migrate",
            "--no-inbox",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        text.contains("tailing the transaction log") && text.contains("not available on SQLite"),
        "{text}"
    );

    // A sink that refuses the credentials.
    let table = unique("cli");
    assert!(
        outbox(&["--table", &table, "migrate", "--no-inbox"])
            .status
            .success()
    );
    std::fs::write(
        &config,
        format!(
            "table = \"{table}\"\n[sink]\nkind = \"rabbitmq\"\nurl = \"amqp://guest:wrong@127.0.0.1:5672/%2f\"\n[http]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--config", config.to_str().unwrap(), "relay"],
    );
    assert_eq!(code, 1);
    assert!(
        text.starts_with("outbox: error: RabbitMQ sink: cannot connect to amqp://guest:***@"),
        "refused credentials stop the relay, the password masked: {text}"
    );

    // Settings that do not apply to the sink, or are not known, are refused before connecting.
    for (sink, problem) in [
        (
            "kind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nmandatory = false\n",
            "outbox: error: sink.mandatory applies to the rabbitmq sink only, not to \"nats\"\n",
        ),
        (
            "kind = \"kafka\"\nurl = \"127.0.0.1:1\"\ncompression = \"brotli\"\n",
            "outbox: error: sink.compression \"brotli\" is not one of none, gzip, snappy, lz4, zstd\n",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:1/hook\"\nsecret = \"s\"\nrouting = \"x\"\n",
            "outbox: error: sink.routing does not apply to the webhook sink: it posts every event to sink.url\n",
        ),
    ] {
        std::fs::write(
            &config,
            format!(
                "table = \"{table}\"\n[sink]\n{sink}[http]\nlisten = \"127.0.0.1:{}\"\n",
                free_port()
            ),
        )
        .unwrap();
        assert_eq!(
            fails(
                &[("OUTBOX_DATABASE_URL", &url)],
                &["--config", config.to_str().unwrap(), "relay"],
            ),
            (2, problem.to_owned())
        );
    }

    // A webhook secret that is not a Standard Webhooks one is refused before any request.
    std::fs::write(
        &config,
        format!(
            "table = \"{table}\"\n[sink]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/hook\"\nsecret = \"s3cret\"\n[http]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let (_, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--config", config.to_str().unwrap(), "relay"],
    );
    assert!(
        text.contains("the webhook secret is not `whsec_` followed by base64"),
        "{text}"
    );

    // The relay's database connections carry an application name; the error shows the URL as
    // the user wrote it.
    let (code, text) = fails(
        &[],
        &[
            "--database-url",
            "postgres://postgres@127.0.0.1:1/test",
            "relay",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        text.starts_with("outbox: error: cannot connect to postgres://postgres@127.0.0.1:1/test: "),
        "{text}"
    );
    assert!(!text.contains("application_name"), "{text}");
    std::fs::write(&config, format!("table = \"{table}\"\n")).unwrap();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--config", config.to_str().unwrap(), "relay"],
    );
    assert_eq!(code, 2);
    assert_eq!(
        text,
        "outbox: error: no sink: add a [sink] section with `kind` and `url` to the configuration file\n"
    );
    std::fs::remove_file(config).unwrap();
}

/// `outbox status` counts a delayed event apart, `outbox cancel` takes it back, and cancelling
/// it again (or an id that is no delayed event) exits 1 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_delayed_events_and_cancel_takes_them_back() {
    let table = unique("cli_delay");
    let migrated = outbox(&["--table", &table, "migrate", "--no-inbox"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    let events = Outbox::for_table(TableName::new(table.clone()).unwrap());
    let mut tx = pool.begin().await.unwrap();
    let reminder = Event::new("order", "PaymentReminder", Some(7), &serde_json::json!({}))
        .unwrap()
        .deliver_after(Duration::from_secs(3600));
    let delayed = events.record(&mut *tx, &reminder).await.unwrap();
    let now = Event::new("order", "OrderPlaced", Some(7), &serde_json::json!({})).unwrap();
    let placed = events.record(&mut *tx, &now).await.unwrap();
    tx.commit().await.unwrap();

    let totals = || {
        let output = outbox(&["--table", &table, "status", "--json"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        status["events"]
            .as_array()
            .unwrap()
            .iter()
            .fold((0, 0), |(p, d), row| {
                (
                    p + row["pending"].as_i64().unwrap(),
                    d + row["delayed"].as_i64().unwrap(),
                )
            })
    };
    assert_eq!(totals(), (1, 1));
    let text = stdout(&outbox(&["--table", &table, "status"]));
    assert!(
        text.contains("total: 1 pending, 0 dead, 1 delayed"),
        "{text}"
    );

    let cancelled = outbox(&["--table", &table, "cancel", &delayed.to_string()]);
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    assert_eq!(stdout(&cancelled), format!("cancelled {delayed}\n"));
    assert_eq!(totals(), (1, 0));

    let again = outbox(&[
        "--table",
        &table,
        "cancel",
        &delayed.to_string(),
        &placed.to_string(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        stderr(&again),
        format!(
            "outbox: error: not cancelled (published already, dead, or not a delayed event of `{table}`): {delayed}, {placed}\n"
        )
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_status_work_on_mariadb_and_sqlite() {
    let mysql = std::env::var("OUTBOX_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let file = std::env::temp_dir().join(format!("{}.db", unique("cli")));
    let sqlite = format!("sqlite://{}?mode=rwc", file.display());
    for url in [mysql, sqlite] {
        let table = unique("cli");
        let run = |args: &[&str]| {
            Command::new(OUTBOX)
                .args(["--database-url", &url, "--table", &table])
                .args(args)
                .output()
                .unwrap()
        };
        let migrated = run(&["migrate", "--no-inbox"]);
        assert!(migrated.status.success(), "{url}: {}", stderr(&migrated));
        let outbox = Outbox::for_table(TableName::new(table.as_str()).unwrap());
        let recorded = async {
            macro_rules! record_three {
                ($pool:expr) => {{
                    let pool = $pool;
                    let mut tx = pool.begin().await.unwrap();
                    for n in 0..3 {
                        let event =
                            Event::new("account", "Opened", Some(n), &serde_json::json!({}))
                                .unwrap();
                        outbox.record(&mut *tx, &event).await.unwrap();
                    }
                    tx.commit().await.unwrap();
                }};
            }
            if url.starts_with("mysql") {
                record_three!(sqlx::MySqlPool::connect(&url).await.unwrap());
            } else {
                record_three!(sqlx::SqlitePool::connect(&url).await.unwrap());
            }
        };
        recorded.await;
        let status = run(&["status", "--json"]);
        assert!(status.status.success(), "{url}: {}", stderr(&status));
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let rows = status["events"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{url}: {rows:?}");
        assert_eq!(rows[0]["pending"], 3, "{url}: {rows:?}");
        assert_eq!(rows[0]["dead"], 0, "{url}: {rows:?}");
        let age = rows[0]["oldest_pending_secs"].as_f64().unwrap();
        assert!((0.0..60.0).contains(&age), "{url}: lag {age}");
    }
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_events_as_they_are_recorded() {
    use std::io::BufRead;
    let table = unique("cli");
    assert!(
        outbox(&["--table", &table, "migrate", "--no-inbox"])
            .status
            .success()
    );
    record(&table, 2).await; // already there: not printed without --from-start
    let mut tail = Command::new(OUTBOX)
        .args(["--table", &table, "tail", "--json"])
        .env("OUTBOX_DATABASE_URL", postgres_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let reader = std::io::BufReader::new(tail.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines() {
            if lines.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    record(&table, 5).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        let line = received.recv_timeout(Duration::from_secs(10)).unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["event_type"], "Deposited");
        seen.push(event["seq"].as_i64().unwrap());
    }
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "{seen:?}");
    assert!(
        seen[0] > 2,
        "an event recorded before the tail started was printed: {seen:?}"
    );
    signal(&tail, "TERM");
    assert!(tail.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_large_set_shows_progress() {
    let table = unique("cli");
    assert!(
        outbox(&["--table", &table, "migrate", "--no-inbox"])
            .status
            .success()
    );
    record(&table, 1_200).await;
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET dead_at = now(), attempts = 10, last_error = 'down'"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let replayed = outbox(&[
        "--table",
        &table,
        "dead-letters",
        "replay",
        "--all",
        "--yes",
    ]);
    assert_eq!(stdout(&replayed), "1200 dead letters replayed\n");
    let progress = stderr(&replayed);
    assert!(
        progress.contains("replayed 500 of 1200") && progress.contains("replayed 1200 of 1200"),
        "{progress}"
    );
    assert_eq!(status(&table), (1_200, 0));
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_processes_at_once_publish_everything_in_per_aggregate_order() {
    let table = unique("cli");
    assert!(
        outbox(&["--table", &table, "migrate", "--no-inbox"])
            .status
            .success()
    );
    let stream = stream_for(&table).await;
    record(&table, 3_000).await;
    let config = relay_config(&table, free_port());
    let second = std::env::temp_dir().join(format!("{table}-b.toml"));
    let text = std::fs::read_to_string(&config).unwrap();
    let port = free_port();
    std::fs::write(
        &second,
        text.replace("test-relay", "test-relay-b").replace(
            &text[text.find("listen = ").unwrap()..],
            &format!("listen = \"127.0.0.1:{port}\"\n"),
        ),
    )
    .unwrap();
    let mut relays = [start_relay(&config), start_relay(&second)];
    wait_for("two relays to drain", Duration::from_secs(90), || {
        status(&table).0 == 0
    });
    for relay in &mut relays {
        signal(relay, "TERM");
        assert!(relay.wait().unwrap().success());
    }
    // Per aggregate, the stream holds the events in recording order.
    let info = stream.get_info().await.unwrap();
    assert_eq!(info.state.messages, 3_000);
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for seq in 1..=info.state.messages {
        let message = stream.get_raw_message(seq).await.unwrap();
        let aggregate = message
            .headers
            .get(outbox::sinks::AGGREGATE_ID)
            .unwrap()
            .as_str()
            .to_owned();
        let n = serde_json::from_slice::<serde_json::Value>(&message.payload).unwrap()["n"]
            .as_i64()
            .unwrap();
        let previous = last.insert(aggregate.clone(), n);
        assert!(
            previous.is_none_or(|previous| previous < n),
            "{aggregate}: {n} after {previous:?}"
        );
    }
    std::fs::remove_file(config).unwrap();
    std::fs::remove_file(second).unwrap();
}

/// A child process killed when dropped, so that a failing test leaves no relay running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A webhook receiver for the relay service: answers 503 while `down`, else keeps the events.
#[derive(Clone, Default)]
struct Hook {
    down: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    ids: Arc<Mutex<HashSet<String>>>,
}

impl Hook {
    /// Serves on `port` until the test ends.
    async fn serve(&self, port: u16) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let hook = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let hook = hook.clone();
                async move {
                    if hook.down.load(SeqCst) {
                        hook.refused.fetch_add(1, SeqCst);
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let events: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
                    let mut ids = hook.ids.lock().unwrap();
                    for event in events {
                        ids.insert(event["id"].as_str().unwrap().to_owned());
                    }
                    axum::http::StatusCode::OK
                }
            })
            .head(|| async { "" }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
}

async fn until(what: &str, limit: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The relay service started while its webhook receiver is down keeps running, says so on
/// `/health`, and relays once the receiver is up; an outage of hundreds of failed deliveries
/// is a few plain lines on stderr (no colour codes in a file), ending with the recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_service_waits_for_its_sink_and_reports_an_outage_in_a_few_lines() {
    let table = unique("cli");
    assert!(
        outbox(&["--table", &table, "migrate", "--no-inbox"])
            .status
            .success()
    );
    record(&table, 100).await;
    let (hook_port, http_port) = (free_port(), free_port());
    let config = std::env::temp_dir().join(format!("{table}.toml"));
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\ntable = \"{table}\"\n[relay]\npoll_interval = \"20ms\"\n\
             [sink]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n",
            postgres_url()
        ),
    )
    .unwrap();
    let log = std::env::temp_dir().join(format!("{table}.log"));
    let mut relay = KillOnDrop(
        Command::new(OUTBOX)
            .arg("--config")
            .arg(&config)
            .arg("relay")
            .env_remove("OUTBOX_DATABASE_URL")
            .env_remove("OUTBOX_LOG")
            .env(
                "OUTBOX_WEBHOOK_SECRET",
                "whsec_czNjcmV0LXMzY3JldC1zM2NyZXQtczNjcmV0",
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

    until(
        "/health to report the sink",
        Duration::from_secs(30),
        async || match reqwest::get(format!("http://127.0.0.1:{http_port}/health")).await {
            Ok(response) => {
                response.status() == 503
                    && response.text().await.unwrap().contains("sink unreachable")
            }
            Err(_) => false,
        },
    )
    .await;
    assert!(relay.0.try_wait().unwrap().is_none(), "the relay gave up");

    // The receiver comes up, but answers 503 for 4 seconds: an outage of the deliveries.
    let hook = Hook::default();
    hook.down.store(true, SeqCst);
    hook.serve(hook_port).await;
    until("deliveries to fail", Duration::from_secs(30), async || {
        hook.refused.load(SeqCst) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    hook.down.store(false, SeqCst);
    until(
        "every event to arrive",
        Duration::from_secs(60),
        async || hook.ids.lock().unwrap().len() == 100,
    )
    .await;
    let (code, metrics) = http_get(http_port, "/metrics").await;
    assert_eq!(code, 200);
    let failed: f64 = metrics
        .lines()
        .find(|line| line.starts_with("outbox_events_failed_total"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no failed counter in:\n{metrics}"));
    // Each try fails the oldest event of each of the 20 aggregates (the later ones wait for it
    // uncounted), and the 4-second outage lasts at least two tries.
    assert!(failed >= 40.0, "the outage failed only {failed} deliveries");
    assert_eq!(
        http_get(http_port, "/health").await,
        (200, "ok\n".to_owned())
    );
    signal(&relay.0, "TERM");
    assert!(relay.0.wait().unwrap().success());

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text}"
    );
    let warnings = text.lines().filter(|line| line.contains(" WARN ")).count();
    assert!(
        (2..=8).contains(&warnings),
        "{failed} failed deliveries gave {warnings} warnings:\n{text}"
    );
    assert!(text.contains("the sink is unreachable"), "{text}");
    assert!(text.contains("delivery failed"), "{text}");
    let recovered = text
        .lines()
        .find(|line| line.contains("deliveries recovered"))
        .unwrap_or_else(|| panic!("no recovery line:\n{text}"));
    assert!(recovered.contains(" INFO "), "{recovered}");
    std::fs::remove_file(config).unwrap();
    std::fs::remove_file(log).unwrap();
}

/// The guide's table of commands names every command `outbox --help` lists, so that it cannot
/// drift from the binary.
#[test]
fn the_guide_lists_every_command() {
    let output = Command::new(OUTBOX).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = stdout(&output);
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|command| *command != "help")
        .collect();
    assert!(commands.len() >= 9, "{commands:?}");
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operate.md"))
        .unwrap();
    let missing: Vec<&&str> = commands
        .iter()
        .filter(|command| !guide.contains(&format!("| `outbox {command}")))
        .collect();
    assert!(
        missing.is_empty(),
        "commands missing from docs/operate.md: {missing:?}"
    );
}

#[test]
fn relay_help_says_what_happens_to_unroutable_and_undeliverable_events() {
    let output = Command::new(OUTBOX)
        .args(["relay", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = stdout(&output);
    for promise in [
        "mandatory",
        "NO_ROUTE",
        "dead letter",
        "mandatory = false",
        "`/health` answers 503",
    ] {
        assert!(help.contains(promise), "`{promise}` missing from:\n{help}");
    }
}

/// An OpenTelemetry collector's OTLP/HTTP receiver, as the test's stand-in: decodes the
/// protobuf export requests with the OTLP protocol's own types and keeps what they carry.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    services: Arc<Mutex<HashSet<String>>>,
    metrics: Arc<Mutex<HashSet<String>>>,
}

impl Collector {
    async fn serve(&self, port: u16) {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        use prost::Message as _;

        fn service_name(
            resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
        ) -> Option<String> {
            let attribute = resource?
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")?;
            match attribute.value.as_ref()?.value.as_ref()? {
                Value::StringValue(name) => Some(name.clone()),
                _ => None,
            }
        }

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let traces = self.clone();
        let metrics = self.clone();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let collector = traces.clone();
                    async move {
                        let request = ExportTraceServiceRequest::decode(body).unwrap();
                        for resource in request.resource_spans {
                            if let Some(name) = service_name(resource.resource.as_ref()) {
                                collector.services.lock().unwrap().insert(name);
                            }
                            for scope in resource.scope_spans {
                                collector.spans.lock().unwrap().extend(scope.spans);
                            }
                        }
                        (
                            [("content-type", "application/x-protobuf")],
                            Vec::<u8>::new(),
                        )
                    }
                }),
            )
            .route(
                "/v1/metrics",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let collector = metrics.clone();
                    async move {
                        let request = ExportMetricsServiceRequest::decode(body).unwrap();
                        for resource in request.resource_metrics {
                            for scope in resource.scope_metrics {
                                let names = scope.metrics.into_iter().map(|metric| metric.name);
                                collector.metrics.lock().unwrap().extend(names);
                            }
                        }
                        (
                            [("content-type", "application/x-protobuf")],
                            Vec::<u8>::new(),
                        )
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
}

/// With `[telemetry] otlp_endpoint`, the relay service exports its spans and metrics over
/// OTLP/HTTP (protobuf): the `send` span of a relayed event continues the trace recorded with
/// it, and the relay's counters arrive as OpenTelemetry metrics, under the configured service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_service_exports_its_spans_and_metrics_over_otlp() {
    let table = unique("otlp");
    let migrated = outbox(&["--table", &table, "migrate", "--no-inbox"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let mut stream = stream_for(&table).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    let event = Event::new("account", "Opened", Some("acc-1"), &serde_json::json!({}))
        .unwrap()
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"));
    let mut tx = pool.begin().await.unwrap();
    Outbox::for_table(TableName::new(table.clone()).unwrap())
        .record(&mut *tx, &event)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let collector = Collector::default();
    let collector_port = free_port();
    collector.serve(collector_port).await;
    let config = relay_config(&table, free_port());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:{collector_port}\"\n\
         service_name = \"billing-relay\"\nexport_interval = \"200ms\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let relay = KillOnDrop(start_relay(&config));
    wait_for("the relay to publish", Duration::from_secs(30), || {
        status(&table).0 == 0
    });
    signal(&relay.0, "TERM");
    let mut relay = relay;
    let code = relay.0.wait().unwrap();
    assert!(code.success(), "the relay exited with {code}");
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    // The batch exporter flushes on shutdown; the metrics reader every 200 ms and on shutdown.
    let spans = collector.spans.lock().unwrap().clone();
    let send = spans
        .iter()
        .find(|span| span.name == format!("send {table}.account"))
        .unwrap_or_else(|| {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            panic!("no send span among {names:?}")
        });
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(&send.trace_id),
        trace_id,
        "the span continues the recorded trace"
    );
    assert_eq!(hex(&send.parent_span_id), parent_id);
    assert_eq!(
        send.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Producer as i32
    );
    assert!(
        collector.services.lock().unwrap().contains("billing-relay"),
        "the spans carry the configured service.name"
    );
    let metrics = collector.metrics.lock().unwrap().clone();
    assert!(
        metrics.contains("outbox_events_published_total"),
        "the relay's counters are exported: {metrics:?}"
    );
    std::fs::remove_file(config).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_compares_the_kept_events_with_the_stream_and_fails_on_a_loss() {
    let table = unique("cli");
    assert!(
        outbox(&["--table", &table, "migrate", "--no-inbox"])
            .status
            .success()
    );
    let _stream = stream_for(&table).await;
    record(&table, 300).await;
    let config = relay_config_with(&table, free_port(), r#"retention = "1h""#);
    let mut relay = start_relay(&config);
    wait_for("the relay to drain", Duration::from_secs(60), || {
        status(&table).0 == 0
    });
    signal(&relay, "TERM");
    assert!(relay.wait().unwrap().success());

    let stream = table.to_uppercase();
    let audit = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "audit",
            "--read",
            &stream,
        ];
        args.extend_from_slice(extra);
        Command::new(OUTBOX)
            .args(&args)
            .env_remove("OUTBOX_DATABASE_URL")
            .output()
            .unwrap()
    };
    let clean = audit(&[]);
    assert!(
        clean.status.success(),
        "{}{}",
        stdout(&clean),
        stderr(&clean)
    );
    let table_text = stdout(&clean);
    for line in [
        "committed                     300",
        "delivered                     300",
        "missing (lost)                  0  ok",
        "phantoms                        0  ok",
        "order violations                0  ok",
    ] {
        assert!(table_text.contains(line), "no {line:?} in:\n{table_text}");
    }
    let json = audit(&["--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (report["published"].as_u64(), report["observed"].as_u64()),
        (Some(300), Some(300))
    );

    // An event the table says was published, that the stream never got.
    record(&table, 1).await;
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    let lost: uuid::Uuid = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET published_at = now() WHERE published_at IS NULL RETURNING id"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    let failed = audit(&[]);
    assert_eq!(failed.status.code(), Some(3), "{}", stdout(&failed));
    assert!(
        stdout(&failed).contains(&format!("missing    {lost}")),
        "{}",
        stdout(&failed)
    );
    assert_eq!(
        stderr(&failed),
        "outbox: error: audit failed: 1 missing, 0 phantoms, 0 order violations\n"
    );
    // Up to the last event the relay published, the audit is clean again.
    let last: uuid::Uuid = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {table} WHERE id <> $1 ORDER BY seq DESC LIMIT 1"
    )))
    .bind(lost)
    .fetch_one(&pool)
    .await
    .unwrap();
    let bounded = audit(&["--to", &last.to_string()]);
    assert!(bounded.status.success(), "{}", stdout(&bounded));

    let db = postgres_url();
    let env = [("OUTBOX_DATABASE_URL", db.as_str())];
    let (code, error) = fails(
        &env,
        &[
            "--table",
            &table,
            "audit",
            "--read",
            &stream,
            "--broker",
            "mqtt",
            "--sink-url",
            "mqtt://x",
        ],
    );
    assert_eq!(code, 2);
    assert_eq!(
        error,
        "outbox: error: outbox audit reads nats, kafka, redis or rabbitmq, not \"mqtt\" \
         (MQTT and webhooks keep no history to compare)\n"
    );
    let (code, error) = fails(&env, &["--table", &table, "audit", "--read", &stream]);
    assert_eq!(code, 2);
    assert!(error.contains("outbox audit needs a broker"), "{error}");
    std::fs::remove_file(config).unwrap();
}

/// A changefeed row of the outbox table, as CockroachDB's webhook sink sends it.
fn changefeed_row(id: uuid::Uuid, aggregate: &str, n: i64) -> serde_json::Value {
    serde_json::json!({
        "after": {
            "id": id.to_string(), "aggregate_type": "account", "aggregate_id": aggregate,
            "event_type": "Numbered", "payload": { "n": n }, "headers": null,
        },
        "key": [id.to_string()],
        "topic": "outbox",
        "updated": format!("{}.0000000000", 1_733_300_000_000_000_000_i64 + n),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changefeed_endpoint_relays_rows_over_https_and_refuses_a_wrong_secret() {
    let prefix = unique("cf");
    let stream = stream_for(&prefix).await;
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let config = dir.join("outbox.toml");
    std::fs::write(
        &config,
        format!(
            r#"[sink]
kind = "nats"
url = "{nats}"
routing = "{prefix}.{{aggregate_type}}"

[relay]
poll_interval = "20ms"

[changefeed]
listen = "127.0.0.1:{port}"
cert = "{cert}"
key = "{key}"
store = "sqlite://{store}?mode=rwc"
"#,
            nats = nats_url(),
            store = dir.join("changefeed.db").display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    // No database but the receiver's own: the changefeed brings the rows.
    let mut child = KillOnDrop(
        Command::new(OUTBOX)
            .arg("--config")
            .arg(&config)
            .arg("changefeed")
            .env_remove("OUTBOX_DATABASE_URL")
            .env("OUTBOX_CHANGEFEED_SECRET", "Bearer cf-secret")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for("the changefeed endpoint", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/");
    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    let rows: Vec<serde_json::Value> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| changefeed_row(*id, "a", n as i64))
        .collect();
    let body = serde_json::json!({ "payload": rows, "length": 3 }).to_string();

    let refused = client
        .post(&url)
        .header("Authorization", "Bearer wrong")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let malformed = client
        .post(&url)
        .header("Authorization", "Bearer cf-secret")
        .body("{\"payload\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    assert!(
        malformed
            .text()
            .await
            .unwrap()
            .contains("not a changefeed request"),
        "the reason is in the answer"
    );
    for attempt in 0..2 {
        let accepted = client
            .post(&url)
            .header("Authorization", "Bearer cf-secret")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(accepted.status().as_u16(), 200);
        let text = accepted.text().await.unwrap();
        let expected = if attempt == 0 {
            "staged 3, replays 0"
        } else {
            "staged 0, replays 3"
        };
        assert!(text.starts_with(expected), "{text}");
    }

    // The same request gzipped, as CockroachDB 25.2+ sends it with `compression = 'gzip'`:
    // understood (its rows are replays now); an encoding the receiver does not know is 415.
    let gzipped = {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(body.as_bytes()).unwrap();
        encoder.finish().unwrap()
    };
    let compressed = client
        .post(&url)
        .header("Authorization", "Bearer cf-secret")
        .header("Content-Encoding", "gzip")
        .body(gzipped)
        .send()
        .await
        .unwrap();
    assert_eq!(compressed.status().as_u16(), 200);
    let text = compressed.text().await.unwrap();
    assert!(text.starts_with("staged 0, replays 3"), "{text}");
    let unknown = client
        .post(&url)
        .header("Authorization", "Bearer cf-secret")
        .header("Content-Encoding", "x-unknown")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 415);

    // Nothing is published before a resolved timestamp covers the rows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stream = stream;
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    // A resolved message, then the receiver's metrics on the same endpoint.
    let resolved = client
        .post(&url)
        .header("Authorization", "Bearer cf-secret")
        .body(r#"{"resolved": "1733300000000000010.0000000000"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resolved.status().as_u16(), 200);
    let metrics = client
        .get(format!("https://localhost:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert_eq!(value("outbox_changefeed_events_total"), 3.0);
    assert_eq!(
        value("outbox_changefeed_resolved_timestamp_seconds"),
        1_733_300_000.0
    );

    // Released by the resolved timestamp, published by the relay, in commit order.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while messages(&mut stream).await < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the 3 events were not published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(messages(&mut stream).await, 3);
    for (seq, id) in (1..=3).zip(&ids) {
        let message = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(
            message.headers.get("Nats-Msg-Id").unwrap().as_str(),
            id.to_string()
        );
        assert_eq!(message.subject.as_str(), format!("{prefix}.account"));
    }
    signal(&child.0, "TERM");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap())
        .delete_stream(prefix.to_uppercase())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
