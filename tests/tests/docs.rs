//! The reference lists against the code they describe, so that they cannot drift: every cargo
//! feature in the README's table, every error variant in the guide's reference, and the guide's
//! and README's Rust blocks compiled (see `outbox_tests::guide`).
#![allow(clippy::unwrap_used)]

fn read(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names of `outbox`'s cargo features, read from its manifest.
fn features() -> Vec<String> {
    let manifest = read("outbox-core/Cargo.toml");
    let section = manifest
        .split("[features]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap();
    section
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.trim().to_owned()))
        .filter(|name| !name.is_empty() && name != "default")
        .collect()
}

#[test]
fn the_readme_lists_every_cargo_feature() {
    let readme = read("README.md");
    let features = features();
    assert!(features.len() >= 14, "{features:?}");
    let missing: Vec<&String> = features
        .iter()
        .filter(|feature| !readme.contains(&format!("`{feature}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "features missing from the README's table: {missing:?}"
    );
}

#[test]
fn the_reference_lists_every_error_variant() {
    let source = read("outbox-core/src/error.rs");
    let body = source
        .split("pub enum Error {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .unwrap();
    let variants: Vec<&str> = body
        .lines()
        .filter_map(|line| line.strip_prefix("    "))
        .filter(|line| line.starts_with(|c: char| c.is_ascii_uppercase()))
        .filter_map(|line| line.split([' ', '{', '(', ',']).next())
        .collect();
    assert!(variants.len() >= 14, "{variants:?}");
    let reference = read("docs/reference.md");
    let missing: Vec<&&str> = variants
        .iter()
        .filter(|variant| !reference.contains(&format!("| `{variant}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "errors missing from docs/reference.md: {missing:?}"
    );
}

/// The README's service is the example's code, word for word.
#[test]
fn the_readme_service_is_the_tested_example() {
    let readme = read("README.md");
    let block = readme
        .split("```rust,no_run\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .unwrap();
    let example = read("examples/src/bin/axum-service.rs");
    let code: Vec<&str> = example
        .lines()
        .filter(|line| !line.starts_with("//!"))
        .collect();
    assert_eq!(block.trim(), code.join("\n").trim());
}
