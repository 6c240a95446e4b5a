//! Runs the PostgreSQL bank example, which checks its own outbox against the committed work,
//! then its read model, which applies the bank's events exactly once.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn bank_records_exactly_the_committed_transfers_and_its_read_model_applies_them_once() {
    let output = Command::new(env!("CARGO_BIN_EXE_bank")).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bank failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("opened 4 accounts"), "{stdout}");
    assert!(stdout.contains("events are in commit order"), "{stdout}");
    assert!(stdout.contains("money in the bank: 4000.00"), "{stdout}");

    // The read model consumes the bank's events, each delivered twice, exactly once. (One test:
    // both binaries use the bank's tables.)
    let output = Command::new(env!("CARGO_BIN_EXE_bank-read-model"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bank-read-model failed:\n{stdout}\n{stderr}"
    );
    let applied = stdout
        .lines()
        .find_map(|line| line.strip_suffix(" duplicate deliveries dropped by the inbox"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let (applied, dropped) = applied.split_once(" events applied, ").unwrap();
    assert_eq!(
        applied, dropped,
        "every event once, every second delivery dropped"
    );
    assert!(applied.parse::<u32>().unwrap() > 4, "{stdout}");
    // Every transaction event was enriched on its way: the events but the 4 account openings.
    let enriched = stdout
        .lines()
        .find_map(|line| {
            line.strip_suffix(
                " transaction events carried their owner's name, read at publish time",
            )
        })
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(
        enriched.parse::<u32>().unwrap(),
        applied.parse::<u32>().unwrap() - 4,
        "{stdout}"
    );
    assert!(
        stdout.contains("the read model matches the bank: 4 accounts"),
        "{stdout}"
    );
}
