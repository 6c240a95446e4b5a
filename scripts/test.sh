#!/usr/bin/env bash
# The whole test suite: starts (or installs) the databases, checks formatting and lints, runs
# the doc tests, packages the publishable crates, then runs every test — unit, integration
# against the real servers, trybuild UI, examples. Ends with the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== doc tests"
cargo test --workspace --all-features --locked --doc

echo "== cargo package (the crates users install: outbox-derive, outbox, outbox-cli)"
# Builds each package from its .crate as crates.io would, against the others packaged beside it.
cargo package -p outbox-derive -p outbox -p outbox-cli --locked --allow-dirty

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --locked --no-fail-fast
else
  cargo test --workspace --all-features --locked --no-fail-fast
fi
