//! Drives the README's axum service over HTTP, against a PostgreSQL database of its own: a
//! request that succeeds produces its event at the sink, one that fails produces none, and the
//! relay stops with the server on Ctrl-C.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn postgres_url(database: &str) -> String {
    let base = std::env::var("OUTBOX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{database}"),
        None => base,
    }
}

#[tokio::test]
async fn the_axum_service_publishes_what_it_committed_and_stops_with_its_relay() {
    let database = format!("axum_service_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&postgres_url("test"))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL: {e}; start it with scripts/services.sh"));
    let create = format!("CREATE DATABASE {database}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&admin)
        .await
        .unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_axum-service"))
        .env("DATABASE_URL", postgres_url(&database))
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on"), "{line}");

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/accounts");
    let opened = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"owner": "Ada"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status().as_u16(), 200);
    let account: serde_json::Value = serde_json::from_str(&opened.text().await.unwrap()).unwrap();
    assert_eq!(account["owner"], "Ada");
    // An empty owner breaks the table's CHECK: the transaction rolls back, event and all.
    let refused = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"owner": ""}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);

    // What the relay published, read from the sink (its stdout) once the service stops.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the service did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let published: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("published AccountOpened "))
        .map(|payload| serde_json::from_str(payload).unwrap())
        .collect();
    assert_eq!(published, [account], "{stdout}");

    admin.close().await;
    let admin = sqlx::PgPool::connect(&postgres_url("test")).await.unwrap();
    let drop = format!("DROP DATABASE {database} WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
        .execute(&admin)
        .await
        .unwrap();
}
