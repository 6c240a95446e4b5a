//! Compile-time behaviour of `#[outbox_event]`, `#[inbox_handler]` and `#[derive(OutboxEvent)]`:
//! every rule has a case in `tests/ui/` whose `.stderr` pins the message a user sees, and
//! `tests/ui/pass/` holds what must keep compiling under the attributes. Regenerate with
//! `TRYBUILD=overwrite` and review every diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
