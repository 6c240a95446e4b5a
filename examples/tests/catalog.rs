//! The bank's AsyncAPI catalog, validated by the official AsyncAPI parser (`@asyncapi/parser`,
//! run with Node.js; `scripts/services.sh` installs both): the parser accepts it and reads
//! back the channels, messages, versions and payload schemas the bank emits — and refuses a
//! broken copy, so the check can fail.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn validator() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/validate_asyncapi.mjs")
}

/// Runs the official parser on `document`: its exit code, what it read (stdout), and its
/// diagnostics (stderr).
fn parse(document: &serde_json::Value, name: &str) -> (i32, String, String) {
    let path = std::env::temp_dir().join(format!("{name}-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string_pretty(document).unwrap()).unwrap();
    let output = Command::new("node")
        .arg(validator())
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e}; install it with scripts/services.sh"));
    std::fs::remove_file(&path).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("Cannot find package '@asyncapi/parser'"),
        "the AsyncAPI parser is not installed: run scripts/services.sh"
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        stderr,
    )
}

fn bank_catalog() -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_bank"))
        .arg("--catalog")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_bank_catalog_is_valid_asyncapi_and_describes_every_event() {
    let catalog = bank_catalog();
    let (code, read, diagnostics) = parse(&catalog, "bank-catalog");
    assert_eq!(code, 0, "the parser refused the catalog:\n{diagnostics}");
    let read: serde_json::Value = serde_json::from_str(&read).unwrap();
    assert_eq!(read["version"], "3.0.0");

    let channels = read["channels"].as_array().unwrap();
    let addresses: Vec<&str> = channels
        .iter()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addresses,
        [
            "bank.account.AccountOpenedEvent",
            "bank.transaction.TransactionCreatedEvent"
        ]
    );
    let message = |channel: usize| &channels[channel]["messages"][0];
    // The payload schemas, derived with schemars, resolved by the parser through their $refs.
    let account = message(0);
    assert_eq!(account["name"], "AccountOpenedEvent");
    assert_eq!(account["payload"]["properties"]["owner"]["type"], "string");
    let transaction = message(1);
    assert_eq!(transaction["name"], "TransactionCreatedEvent");
    assert_eq!(
        transaction["payload"]["properties"]["account"]["allOf"][0]["properties"]["owner"]["type"],
        "string",
        "a nested entity's schema is resolved"
    );
    // The version travels as a header, which the catalog declares.
    let headers = |m: &serde_json::Value| -> Vec<String> {
        serde_json::from_value(m["headers"].clone()).unwrap()
    };
    assert!(headers(transaction).contains(&"outbox-event-version".to_owned()));
    assert!(!headers(account).contains(&"outbox-event-version".to_owned()));
    assert!(headers(account).contains(&"outbox-event-id".to_owned()));
    let operations = read["operations"].as_array().unwrap();
    assert_eq!(operations.len(), 2);
    assert!(operations.iter().all(|op| op["action"] == "send"));
    // What the catalog says of versions, in the document itself.
    let versioned = &catalog["components"]["messages"]["TransactionCreatedEvent.v2"];
    assert_eq!(versioned["x-outbox"]["version"], 2);
    assert_eq!(
        versioned["headers"]["properties"]["outbox-event-version"]["const"],
        "2"
    );
}

#[test]
fn the_parser_refuses_a_broken_catalog() {
    let mut broken = bank_catalog();
    // A message that points at no component, and no info.
    broken["channels"]["bank.account.AccountOpenedEvent"]["messages"]["AccountOpenedEvent"]["$ref"] =
        "#/components/messages/Nowhere".into();
    broken.as_object_mut().unwrap().remove("info");
    let (code, _, diagnostics) = parse(&broken, "broken-catalog");
    assert_eq!(code, 1, "the parser accepted a broken catalog");
    assert!(diagnostics.contains("info"), "{diagnostics}");
}
