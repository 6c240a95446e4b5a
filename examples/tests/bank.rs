//! Runs the PostgreSQL bank example; it checks its own outbox against the committed work and
//! fails otherwise.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn bank_records_exactly_the_committed_transfers_in_commit_order() {
    let output = Command::new(env!("CARGO_BIN_EXE_bank")).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bank failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("opened 4 accounts"), "{stdout}");
    assert!(stdout.contains("events are in commit order"), "{stdout}");
    assert!(stdout.contains("money in the bank: 4000.00"), "{stdout}");
}
