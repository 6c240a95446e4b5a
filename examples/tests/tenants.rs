//! Runs the tenants example: one relay publishes every tenant's outbox, the one created while
//! it runs included, taking the tables in turn.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn one_relay_publishes_every_tenants_outbox_in_turns() {
    let output = Command::new(env!("CARGO_BIN_EXE_tenants"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("serving outbox_acme, outbox_globex, outbox_initech"),
        "{stdout}"
    );
    for (tenant, events) in [("acme", 6), ("globex", 3), ("initech", 3), ("umbrella", 2)] {
        assert!(
            stdout.contains(&format!("{tenant}: {events} events published")),
            "{stdout}"
        );
    }
    // Turns: acme's backlog does not go out in one run before the others get theirs.
    let order: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("published "))
        .filter_map(|line| line.rsplit(' ').next())
        .collect();
    let first_globex = order.iter().position(|t| *t == "globex").unwrap();
    let last_acme = order.iter().rposition(|t| *t == "acme").unwrap();
    assert!(first_globex < last_acme, "{order:?}");
}
