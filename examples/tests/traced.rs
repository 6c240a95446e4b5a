//! Runs the traced example: the request, the relay's `send` and the consumer's `process` spans
//! make one trace, each the child of the one before.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn traced_example_prints_one_trace_from_the_request_to_the_consumer() {
    let output = Command::new(env!("CARGO_BIN_EXE_traced")).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "traced failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(
        tree,
        [
            "  POST /accounts (server)",
            "    send (producer)",
            "      process (consumer)",
            "        mail Ada (internal)",
        ],
        "{stdout}"
    );
    assert!(stdout.starts_with("trace "), "{stdout}");
    assert!(
        stdout.lines().next().unwrap().ends_with(": 4 spans"),
        "{stdout}"
    );
}
