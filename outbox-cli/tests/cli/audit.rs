//! `outbox audit` against a stream.

use super::*;

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
