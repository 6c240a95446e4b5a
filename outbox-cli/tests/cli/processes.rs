//! Relay processes: two at once, and one waiting for its sink through an outage.

use super::*;

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
pub(super) struct KillOnDrop(pub(super) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A webhook receiver for the relay service: answers 503 while `down`, else keeps the events.
#[derive(Clone, Default)]
pub(super) struct Hook {
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

pub(super) async fn until(what: &str, limit: Duration, mut condition: impl AsyncFnMut() -> bool) {
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
