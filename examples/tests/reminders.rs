//! Runs the reminders example: the unpaid order's reminder is published after its delay, the
//! paid order's never.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_unpaid_order_is_reminded_after_its_delay_and_the_paid_one_never() {
    let output = Command::new(env!("CARGO_BIN_EXE_reminders"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("paid order 2: reminder cancelled: true"),
        "{stdout}"
    );
    let published: Vec<(String, String, f64)> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("published "))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (
                words[0].to_owned(),
                words[3].to_owned(),
                words[5].parse().unwrap(),
            )
        })
        .collect();
    let of = |kind: &str| {
        published
            .iter()
            .filter(|(event, _, _)| event == kind)
            .map(|(_, order, at)| (order.as_str(), *at))
            .collect::<Vec<_>>()
    };
    assert_eq!(of("OrderPlaced").len(), 2, "{stdout}");
    let reminders = of("PaymentReminder");
    assert_eq!(reminders.len(), 1, "{stdout}");
    assert_eq!(reminders[0].0, "1", "only the unpaid order: {stdout}");
    assert!(reminders[0].1 >= 2.0, "not before its delay: {stdout}");
    assert!(stdout.contains("0 events left in the outbox"), "{stdout}");
}
