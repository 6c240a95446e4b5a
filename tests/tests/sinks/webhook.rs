//! Webhooks: signed batches verified by the receiver, one aggregate's events together in order,
//! a receiver killed and back, refusals, 503s.

use super::*;

/// A webhook receiver that verifies each request's signature, keeps the events, and refuses
/// (422) any request holding an event whose payload has `"poison": true`. It runs on a runtime
/// of its own, in a thread: [`Receiver::kill`] drops that runtime, and every connection with it.
struct Receiver {
    port: u16,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    refused_signatures: Arc<std::sync::atomic::AtomicUsize>,
    /// While above zero, each request is answered 503 and counted down.
    unavailable: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests accepted (answered 200).
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct ReceiverState {
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    refused_signatures: Arc<std::sync::atomic::AtomicUsize>,
    unavailable: Arc<std::sync::atomic::AtomicUsize>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

async fn receive(
    axum::extract::State(state): axum::extract::State<ReceiverState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    // Verified by the official Standard Webhooks library, not by ours.
    let checked = standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(&body, &headers);
    let busy = state.unavailable.fetch_update(
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
        |left| left.checked_sub(1),
    );
    if busy.is_ok() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if checked.is_err() {
        state
            .refused_signatures
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(events) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if events
        .iter()
        .any(|event| event["payload"]["poison"] == true)
    {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    state.events.lock().unwrap().extend(events);
    state
        .accepted
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    StatusCode::OK
}

impl Receiver {
    /// Starts on `port` (0: a free one), keeping the events in `events`.
    fn start(port: u16, events: Arc<Mutex<Vec<serde_json::Value>>>) -> Receiver {
        let refused_signatures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let unavailable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let state = ReceiverState {
            events: events.clone(),
            refused_signatures: refused_signatures.clone(),
            unavailable: unavailable.clone(),
            accepted: accepted.clone(),
        };
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/hook", axum::routing::post(receive).head(|| async { "" }))
                    .with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
            runtime.block_on(async {
                while stopped.try_recv() == Err(std::sync::mpsc::TryRecvError::Empty) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            // Dropping the runtime drops the listener and every open connection.
        });
        Receiver {
            port,
            events,
            refused_signatures,
            unavailable,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn kill(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }

    fn received(&self) -> Vec<(String, String, i64)> {
        received(&self.events)
    }
}

/// `(id, aggregate, n)` of each event a receiver kept, in arrival order.
fn received(events: &Mutex<Vec<serde_json::Value>>) -> Vec<(String, String, i64)> {
    events
        .lock()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["id"].as_str().unwrap().to_owned(),
                event["aggregate_id"].as_str().unwrap().to_owned(),
                event["payload"]["n"].as_i64().unwrap(),
            )
        })
        .collect()
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The webhook keeps order (requests in sequence, an aggregate's events in array order), so an
/// aggregate's consecutive events share requests: 200 events of one aggregate are 2 requests of
/// 100, not 200 round trips. The sink is in the middle of a secret rotation: signed with a
/// new secret and with the receiver's, it is accepted by a receiver that knows only the latter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sends_one_aggregates_events_together_in_order() {
    let table = RelayTable::<Pg>::new().await;
    let receiver = Receiver::start(0, Arc::default());
    let sink = sinks::webhook::WebhookSink::connect(
        &receiver.url(),
        "whsec_bmV3IHNlY3JldCBvZiB0aGUgc2luaywgMjQr",
    )
    .await
    .unwrap()
    .also_signed_with(SECRET)
    .unwrap()
    .max_events(100);
    let mut tx = table.pool.begin().await.unwrap();
    for n in 0..200_i64 {
        let event = Event::new(
            "account",
            "Numbered",
            Some("solo"),
            &serde_json::json!({ "n": n }),
        )
        .unwrap();
        table.outbox.record(&mut *tx, &event).await.unwrap();
    }
    tx.commit().await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(table.pool.clone(), sink)
            .outbox(&table.outbox)
            .batch_size(500)
            .build()
            .run(async move {
                let _ = stopped.await;
            }),
    );
    drained(&table).await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    let received: Vec<i64> = receiver.received().into_iter().map(|(_, _, n)| n).collect();
    assert_eq!(received, (0..200).collect::<Vec<_>>());
    assert_eq!(
        receiver.accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one aggregate's events travel together"
    );
    assert_eq!(
        receiver
            .refused_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the rotating sink's second signature verifies"
    );
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_gets_exactly_the_committed_events_signed_in_batches() {
    let table = RelayTable::<Pg>::new().await;
    let receiver = Receiver::start(0, Arc::default());
    let sink = sinks::webhook::WebhookSink::connect(&receiver.url(), SECRET)
        .await
        .unwrap()
        .max_events(7);
    let committed = record_mix(&table).await;
    relay_all(&table, sink).await;

    let events = receiver.events.lock().unwrap().clone();
    assert_eq!(events.len(), committed.len());
    for event in &events {
        // The documented naming, shared with the Redis entries.
        let mut names: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        let mut expected = vec![
            "aggregate_id",
            "aggregate_type",
            "event_type",
            "id",
            "payload",
        ];
        if event.get("headers").is_some() {
            expected.push("headers");
            expected.sort_unstable();
        }
        assert_eq!(names, expected);
        assert_eq!(event["event_type"], "Numbered");
        assert_eq!(event["aggregate_type"], "account");
        if event["payload"]["n"] == 0 {
            assert_eq!(event["headers"]["traceparent"], TRACEPARENT);
        }
    }
    assert_eq!(
        per_aggregate(&first_deliveries(receiver.received())),
        per_aggregate(&committed)
    );
    assert_eq!(
        receiver
            .refused_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // What the receiver does with a request that was not signed with its secret, or whose
    // body was altered after signing.
    use outbox::sinks::signature::{
        ID_HEADER, SIGNATURE_HEADER, Secret, TIMESTAMP_HEADER, unix_seconds,
    };
    let client = sinks::webhook::reqwest::Client::new();
    let body = r#"[{"id":"x","aggregate_id":"a0","payload":{"n":1000}}]"#;
    for (secret, sent) in [
        (SECRET, body.replace("1000", "1001")),
        ("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", body.to_owned()),
    ] {
        let now = std::time::SystemTime::now();
        let signature = Secret::new(secret)
            .unwrap()
            .sign("msg_x", now, body.as_bytes());
        let response = client
            .post(receiver.url())
            .header(ID_HEADER, "msg_x")
            .header(TIMESTAMP_HEADER, unix_seconds(now).to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(sent)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
    }
    assert_eq!(
        receiver
            .refused_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_eq!(receiver.events.lock().unwrap().len(), committed.len());
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sink_catches_up_after_the_receiver_was_killed() {
    let table = RelayTable::<Pg>::new().await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(0, events.clone());
    let port = receiver.port;
    let sink = sinks::webhook::WebhookSink::connect(&receiver.url(), SECRET)
        .await
        .unwrap()
        .retries(2, Duration::from_millis(50));
    let relay = Running::start(&table, sink);
    let mut committed = record_numbered(&table, 0, 20).await;
    drained(&table).await;
    receiver.kill();
    committed.extend(record_numbered(&table, 20, 20).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        table.remaining().await,
        20,
        "delivered while the receiver was down"
    );
    let receiver = Receiver::start(port, events);
    drained(&table).await;
    relay.stop().await;
    assert_eq!(
        per_aggregate(&first_deliveries(receiver.received())),
        per_aggregate(&committed)
    );
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_refusal_dead_letters_only_the_event_at_fault() {
    let table = RelayTable::<Pg>::new().await;
    let receiver = Receiver::start(0, Arc::default());
    let sink = sinks::webhook::WebhookSink::connect(&receiver.url(), SECRET)
        .await
        .unwrap();
    for n in 0..10_i64 {
        let mut tx = table.pool.begin().await.unwrap();
        let payload = serde_json::json!({ "n": n, "poison": n == 6 });
        let event = Event::new("account", "Numbered", Some(format!("a{n}")), &payload).unwrap();
        table.outbox.record(&mut *tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }
    let relay = Running::start(&table, sink);
    eventually(LIMIT, "nine events delivered", || async {
        receiver.events.lock().unwrap().len() == 9
    })
    .await;
    eventually(LIMIT, "the poison event dead-lettered", || async {
        table
            .outbox
            .dead_letters(&table.pool, 10)
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    relay.stop().await;
    let dead = table.outbox.dead_letters(&table.pool, 10).await.unwrap();
    assert_eq!(dead[0].message.aggregate_id, "a6");
    assert_eq!(dead[0].message.attempts, 1, "a refusal is not retried");
    let mut delivered: Vec<i64> = receiver.received().iter().map(|(_, _, n)| *n).collect();
    delivered.sort_unstable();
    assert_eq!(delivered, vec![0, 1, 2, 3, 4, 5, 7, 8, 9]);
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_a_receiver_that_answers_503() {
    use std::sync::atomic::Ordering::SeqCst;
    let table = RelayTable::<Pg>::new().await;
    let receiver = Receiver::start(0, Arc::default());
    // Five 503s: two in-call retries of the first call fail, then the relay's retries.
    receiver.unavailable.store(5, SeqCst);
    let sink = sinks::webhook::WebhookSink::connect(&receiver.url(), SECRET)
        .await
        .unwrap()
        .retries(2, Duration::from_millis(20));
    let committed = record_numbered(&table, 0, 12).await;
    relay_all(&table, sink).await;
    assert_eq!(
        receiver.unavailable.load(SeqCst),
        0,
        "the 503s were not all met"
    );
    assert_eq!(
        per_aggregate(&first_deliveries(receiver.received())),
        per_aggregate(&committed)
    );
    assert!(
        table
            .outbox
            .dead_letters(&table.pool, 10)
            .await
            .unwrap()
            .is_empty(),
        "a 503 is not a reason to give up"
    );
    table.drop_table().await;
}

/// Serves `/hook` on a free port, answering 200 and keeping each request's headers and body as
/// the sink sent them.
async fn capture() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let requests: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let kept = requests.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let headers: serde_json::Map<String, serde_json::Value> = headers
                        .iter()
                        .map(|(name, value)| {
                            (name.to_string(), value.to_str().unwrap().to_owned().into())
                        })
                        .collect();
                    let body = String::from_utf8(body.to_vec()).unwrap();
                    kept.lock()
                        .unwrap()
                        .push(serde_json::json!({ "headers": headers, "body": body }));
                    axum::http::StatusCode::OK
                }
            },
        )
        .head(|| async { "" }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}/hook"), requests)
}

/// Runs one of the official verifiers of another language on `requests`: for each, the number
/// of events it verified, or `None` when it refused the request.
fn verified_by(program: &str, script: &str, requests: &[serde_json::Value]) -> Vec<Option<u64>> {
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    let case = std::env::temp_dir().join(format!("webhooks-{script}-{}.json", std::process::id()));
    let document = serde_json::json!({ "secret": SECRET, "requests": requests });
    std::fs::write(&case, document.to_string()).unwrap();
    let output = std::process::Command::new(program)
        .arg(interop.join(script))
        .arg(&case)
        .env("PYTHONPATH", interop.join("python"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {START_HINT}"));
    std::fs::remove_file(&case).unwrap();
    assert!(
        output.status.success(),
        "{script} failed ({START_HINT} installs the official libraries):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Requests of the sink, verified by the official Standard Webhooks libraries for Python and
/// Node.js (the README's receivers): accepted with their events, including a rotating sink's
/// (two signatures); refused when tampered with or signed with another secret only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_receivers_verify_the_sink_with_their_official_libraries() {
    const OTHER: &str = "whsec_bmV3IHNlY3JldCBvZiB0aGUgc2luaywgMjQr";
    let (url, captured) = capture().await;
    let message = |n: i64| {
        Message::new(
            uuid::Uuid::now_v7(),
            n,
            "account",
            format!("acc-{n}"),
            "Deposited",
            format!(r#"{{"n":{n},"note":"café ☕"}}"#),
        )
    };
    let sink = sinks::webhook::WebhookSink::connect(&url, SECRET)
        .await
        .unwrap()
        .max_events(3);
    let results = sink.publish(&(0..4).map(message).collect::<Vec<_>>()).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let rotating = sinks::webhook::WebhookSink::connect(&url, OTHER)
        .await
        .unwrap()
        .also_signed_with(SECRET)
        .unwrap();
    assert!(rotating.publish(&[message(4)]).await[0].is_ok());
    let foreign = sinks::webhook::WebhookSink::connect(&url, OTHER)
        .await
        .unwrap();
    assert!(foreign.publish(&[message(5)]).await[0].is_ok());

    let mut requests = captured.lock().unwrap().clone();
    assert_eq!(
        requests.len(),
        4,
        "3 + 1 events, the rotating and the foreign sink's"
    );
    let mut tampered = requests[0].clone();
    let body = tampered["body"]
        .as_str()
        .unwrap()
        .replace("\"n\":0", "\"n\":9");
    tampered["body"] = body.into();
    requests.push(tampered);
    let signatures = requests[2]["headers"]["webhook-signature"]
        .as_str()
        .unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");

    let expected = [Some(3), Some(1), Some(1), None, None];
    assert_eq!(
        verified_by("python3", "verify_webhooks.py", &requests),
        expected,
        "Python"
    );
    assert_eq!(
        verified_by("node", "verify_webhooks.mjs", &requests),
        expected,
        "Node.js"
    );
}

/// A receiver that moved, as web servers and load balancers answer (RFC 9110 §15.4): `/hook`
/// answers each POST with `status` and `Location: /moved` until `fixed`, then verifies and keeps
/// the events; `/moved` answers 200 to any method and counts what reaches it (a client that
/// follows a 301, 302 or 303 comes back as a `GET` without the body; a 307 or 308 re-posts the
/// signed body to a URL nobody configured).
async fn moved_receiver(
    status: u16,
) -> (
    String,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<Mutex<Vec<serde_json::Value>>>,
) {
    use axum::http::{StatusCode, header};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let fixed = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicUsize::new(0));
    let events: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (is_fixed, kept) = (fixed.clone(), events.clone());
    let hook = move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let (is_fixed, kept) = (is_fixed.clone(), kept.clone());
        async move {
            if !is_fixed.load(SeqCst) {
                let status = StatusCode::from_u16(status).unwrap();
                return (status, [(header::LOCATION, "/moved")]).into_response();
            }
            if standardwebhooks::Webhook::new(SECRET)
                .unwrap()
                .verify(&body, &headers)
                .is_err()
            {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            let batch: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            kept.lock().unwrap().extend(batch);
            StatusCode::OK.into_response()
        }
    };
    let reached = moved.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(hook).head(|| async { StatusCode::OK }),
        )
        .route(
            "/moved",
            axum::routing::any(move || {
                let reached = reached.clone();
                async move {
                    reached.fetch_add(1, SeqCst);
                    StatusCode::OK
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (
        format!("http://127.0.0.1:{port}/hook"),
        fixed,
        moved,
        events,
    )
}

use axum::response::IntoResponse as _;

/// A redirect is a failed delivery, for every redirecting status: nothing reaches the URL it
/// points to, nothing is deleted, the events end as dead letters whose error names the status
/// and the `Location`; once the receiver answers again, replaying them delivers each exactly
/// once, in order. (Before: the sink followed the redirect, the `GET` answered 200, and the
/// events were deleted undelivered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirecting_receiver_gets_no_event_deleted_and_replay_delivers_them_once() {
    use std::sync::atomic::Ordering::SeqCst;
    for status in [301_u16, 302, 303, 307, 308] {
        let table = RelayTable::<Pg>::new().await;
        let (url, fixed, moved, events) = moved_receiver(status).await;
        let sink = sinks::webhook::WebhookSink::connect(&url, SECRET)
            .await
            .unwrap()
            .retries(1, Duration::from_millis(10));
        let committed = record_numbered(&table, 0, 8).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let relay = tokio::spawn(
            Relay::builder(table.pool.clone(), sink)
                .outbox(&table.outbox)
                .max_attempts(2)
                .backoff(Backoff::new(
                    Duration::from_millis(20),
                    Duration::from_millis(50),
                ))
                .build()
                .run(async move {
                    let _ = stopped.await;
                }),
        );
        eventually(LIMIT, "every event dead-lettered", || async {
            table.count("dead_at IS NOT NULL").await == 8
        })
        .await;
        assert_eq!(moved.load(SeqCst), 0, "{status}: the redirect was followed");
        assert!(events.lock().unwrap().is_empty());
        assert_eq!(
            table.count("true").await,
            8,
            "{status}: events were deleted"
        );
        for dead in table.outbox.dead_letters(&table.pool, 10).await.unwrap() {
            assert!(
                dead.last_error.contains(&format!("answered {status} "))
                    && dead.last_error.contains("Location: /moved"),
                "{status}: {}",
                dead.last_error
            );
        }
        fixed.store(true, SeqCst);
        assert_eq!(
            table
                .outbox
                .replay_all_dead_letters(&table.pool)
                .await
                .unwrap(),
            8
        );
        drained(&table).await;
        stop.send(()).unwrap();
        relay.await.unwrap();
        let received = received(&events);
        assert_eq!(received.len(), 8, "{status}: each event exactly once");
        assert_eq!(
            per_aggregate(&first_deliveries(received)),
            per_aggregate(&committed),
            "{status}"
        );
        assert_eq!(moved.load(SeqCst), 0);
        table.drop_table().await;
    }
}

/// Standard Webhooks ask for secrets of at least 24 bytes: a shorter one is refused when the
/// sink starts (and when rotating in), with a sentence saying how to make one.
#[tokio::test]
async fn a_webhook_secret_shorter_than_24_bytes_is_refused_at_start_up() {
    let (url, _, _, _) = moved_receiver(302).await;
    // 23 bytes of key.
    let short = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
    let error = sinks::webhook::WebhookSink::connect(&url, short)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("webhook sink: the webhook secret is 23 bytes long once decoded; Standard Webhooks require at least 24"),
        "{error}"
    );
    let sink = sinks::webhook::WebhookSink::connect(&url, SECRET)
        .await
        .unwrap();
    assert!(sink.also_signed_with(short).is_err());
}
