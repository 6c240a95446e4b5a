//! Runs the log-tailing example: the committed accounts are published in commit order, the
//! rolled-back one never, and no outbox row was written.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn log_tailing_example_publishes_in_commit_order_without_rows() {
    let output = Command::new(env!("CARGO_BIN_EXE_log-tailing"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "log-tailing failed (is PostgreSQL up with wal_level = logical? run scripts/services.sh):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let owners: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split("owner ").nth(1))
        .collect();
    assert_eq!(owners, ["\"Grace\"", "\"Ada\"", "\"Linus\""], "{stdout}");
    assert!(stdout.contains("0 rows in the outbox table"), "{stdout}");
    // A slot nobody streams keeps WAL for ever: the test leaves none behind.
    let dropped = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-Atc"])
        .arg("SELECT pg_drop_replication_slot('log_example_outbox_relay')")
        .status()
        .unwrap();
    assert!(dropped.success(), "the example's slot is dropped");
}
