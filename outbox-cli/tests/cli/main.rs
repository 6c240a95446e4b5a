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

mod audit;
mod changefeed;
mod dead_letters;
mod mistakes;
mod processes;
mod service;
mod status;
mod telemetry;

use processes::*;
use service::*;
