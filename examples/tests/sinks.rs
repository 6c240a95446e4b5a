//! Runs each broker example against the local brokers (`scripts/services.sh` starts them): the
//! three committed events are published, the rolled-back one is not, the outbox ends empty; where
//! the example consumes them back, each is applied once and its second delivery skipped.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run(binary: &str) -> String {
    let name = std::path::Path::new(binary)
        .file_name()
        .unwrap()
        .to_string_lossy();
    let db = std::env::temp_dir().join(format!("outbox-{name}-test-{}.db", std::process::id()));
    let output = Command::new(binary).arg(&db).output().unwrap();
    let _ = std::fs::remove_file(&db);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{binary} failed (are the brokers up? run scripts/services.sh):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let published = stdout
        .lines()
        .filter(|line| line.starts_with("published AccountOpenedEvent of account "))
        .count();
    assert_eq!(published, 3, "{stdout}");
    assert!(
        stdout.contains("3 events published; 0 left in the outbox."),
        "{stdout}"
    );
    stdout
}

/// The consuming half of an example: the three accounts applied to the read model through the
/// inbox, and each message's second delivery skipped by it.
fn assert_consumed_once(stdout: &str) {
    for owner in ["Ada", "Grace", "Edsger"] {
        assert!(
            stdout.lines().any(
                |line| line.starts_with("applied AccountOpenedEvent of account")
                    && line.ends_with(&format!("({owner})"))
            ),
            "{owner}'s account was not applied:\n{stdout}"
        );
    }
    let skipped = stdout
        .lines()
        .filter(|line| line.ends_with("delivered again: skipped by the inbox"))
        .count();
    assert_eq!(skipped, 3, "{stdout}");
    assert!(stdout.contains("read model: 3 accounts"), "{stdout}");
}

#[test]
fn nats_example_publishes_the_committed_events_and_consumes_them_once() {
    assert_consumed_once(&run(env!("CARGO_BIN_EXE_sink-nats")));
}

#[test]
fn redis_example_publishes_the_committed_events_and_consumes_them_once() {
    assert_consumed_once(&run(env!("CARGO_BIN_EXE_sink-redis")));
}

#[test]
fn kafka_example_publishes_the_committed_events_and_consumes_them_once() {
    assert_consumed_once(&run(env!("CARGO_BIN_EXE_sink-kafka")));
}

#[test]
fn rabbitmq_example_publishes_the_committed_events_and_consumes_them_once() {
    let stdout = run(env!("CARGO_BIN_EXE_sink-rabbitmq"));
    assert_consumed_once(&stdout);
    assert!(
        stdout.contains("queue bank-audit held 0 messages not acknowledged"),
        "{stdout}"
    );
}

#[test]
fn mqtt_example_publishes_the_committed_events_and_consumes_them_once() {
    assert_consumed_once(&run(env!("CARGO_BIN_EXE_sink-mqtt")));
}

#[test]
fn webhook_example_publishes_the_committed_events() {
    run(env!("CARGO_BIN_EXE_sink-webhook"));
}
