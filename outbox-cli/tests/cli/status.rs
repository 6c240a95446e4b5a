//! `outbox status`, `cancel`, `migrate` on each database, `tail`, and a large replay.

use super::*;

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
