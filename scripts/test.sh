#!/usr/bin/env bash
# The whole test suite: starts (or installs) the databases, checks formatting and lints, then
# runs every test — unit, integration against the real servers, trybuild UI, examples and doc
# tests. Ends with the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== doc tests"
cargo test --workspace --all-features --locked --doc

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --locked --no-fail-fast
else
  cargo test --workspace --all-features --locked --no-fail-fast
fi
