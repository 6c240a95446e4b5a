//! Runs the quickstart binary and checks that the outbox it prints holds exactly the committed
//! events.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// The events of the committed work, in commit order: what the outbox holds and the relay
/// publishes.
const COMMITTED_EVENT_TYPES: [&str; 5] = [
    "AccountOpenedEvent",
    "AccountOpenedEvent",
    "TransactionCreatedEvent",
    "TransactionCreatedEvent",
    "TransactionCreatedEvent",
];

#[test]
fn quickstart_prints_exactly_the_committed_events() {
    let db = std::env::temp_dir().join(format!("outbox-quickstart-test-{}.db", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .arg(&db)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&db);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "quickstart failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .contains("rolled back a transfer of 50.00 from Grace to account 999: no account 999"),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused a transfer of 400.00 from Grace"),
        "{stdout}"
    );
    // The relay publishes the five events, in order, and empties the outbox.
    let published: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("published "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(published, COMMITTED_EVENT_TYPES, "{stdout}");
    assert!(
        stdout.contains("5 events published; 0 left in the outbox."),
        "{stdout}"
    );

    let events: Vec<(&str, &str)> = stdout
        .lines()
        .filter(|line| line.contains('{'))
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let seq = cols.next()?;
            seq.parse::<u32>().ok()?;
            Some((cols.next()?, line))
        })
        .collect();
    let types: Vec<&str> = events.iter().map(|(t, _)| *t).collect();
    assert_eq!(types, COMMITTED_EVENT_TYPES, "{stdout}");
    // The rolled-back debit of 50.00 and the refused 400.00 left nothing behind.
    assert!(!stdout.contains("\"amount_cents\":5000"), "{stdout}");
    assert!(!stdout.contains("\"amount_cents\":40000"), "{stdout}");
    assert!(stdout.contains("5 events recorded"), "{stdout}");
}

/// A newcomer's first `cargo run -p outbox-examples --bin quickstart` compiles no broker
/// client (librdkafka's C build alone takes minutes): the broker examples are behind features.
#[test]
fn the_quickstart_compiles_no_broker_client() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let tree = |features: &[&str]| {
        let output = Command::new(&cargo)
            .args([
                "tree",
                "--offline",
                "--locked",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args(["--manifest-path", manifest, "-p", "outbox-examples"])
            .args(features)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let clients = [
        "rdkafka ",
        "async-nats ",
        "lapin ",
        "rumqttc ",
        "redis ",
        "reqwest ",
    ];
    let quickstart = tree(&[]);
    for client in clients {
        assert!(
            !quickstart.lines().any(|line| line.starts_with(client)),
            "the quickstart's build pulls in {client}"
        );
    }
    // The check can fail: with the brokers' features, every client is there.
    let brokers = tree(&["--features", "brokers"]);
    for client in clients {
        assert!(
            brokers.lines().any(|line| line.starts_with(client)),
            "{client} missing with --features brokers"
        );
    }
}
