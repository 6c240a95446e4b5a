//! `outbox relay` as a service: tables a pattern finds, draining, metrics, SIGTERM and SIGKILL,
//! the log relay killed.

use super::*;

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
pub(super) async fn log_relay_killed_with_sigkill_loses_nothing(source: &str) {
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

pub(super) async fn messages(stream: &mut async_nats::jetstream::stream::Stream) -> u64 {
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
