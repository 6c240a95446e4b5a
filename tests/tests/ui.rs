//! Compile-time behaviour of `#[outbox_event]` and `#[derive(OutboxEvent)]`: every rule has a
//! case in `tests/ui/` whose `.stderr` pins the message a user sees. Regenerate with
//! `TRYBUILD=overwrite` and review every diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
