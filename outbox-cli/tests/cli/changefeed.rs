//! `outbox changefeed` and `outbox changefeed-sql`.

use super::*;

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

/// A changefeed row of the outbox table, as CockroachDB's webhook sink sends it.
pub(super) fn changefeed_row(id: uuid::Uuid, aggregate: &str, n: i64) -> serde_json::Value {
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
