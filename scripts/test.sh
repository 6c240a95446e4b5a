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
# All three packaged together, so that each resolves the others as crates.io would; then the
# library and its macros built from their .crate files, in a target directory of their own:
# cargo takes a registry crate of a given version for immutable, and would reuse an earlier
# run's build of it. (The CLI's code is built by every step below.) Cargo also unpacks those
# crates into its registry sources once per version: remove what an earlier run left there
# (never crates.io's own sources).
for unpacked in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/outbox-*; do
  case "$unpacked" in
    */index.crates.io-*) ;;
    *) rm -rf "$unpacked" ;;
  esac
done
cargo package -p outbox-derive -p outbox -p outbox-cli --locked --allow-dirty --no-verify
# Each package carries both licenses it declares.
for package in outbox-derive outbox outbox-cli; do
  listed=$(cargo package -p "$package" --list --locked --allow-dirty)
  for license in LICENSE-MIT LICENSE-APACHE; do
    grep -qx "$license" <<<"$listed" || { echo "$package: $license missing from the package"; exit 1; }
  done
done
verify_dir=$(mktemp -d)
CARGO_TARGET_DIR="$verify_dir" cargo package -p outbox-derive -p outbox --locked --allow-dirty
rm -rf "$verify_dir"

# Replication slots that failed runs of the log tests left behind would keep WAL for ever.
psql -h 127.0.0.1 -U postgres -d test -Atqc "SELECT count(pg_drop_replication_slot(slot_name)) \
  FROM pg_replication_slots WHERE NOT active AND slot_name LIKE 'log\_t%\_relay'" >/dev/null

echo "== tests that restart or reconfigure PostgreSQL or NATS (alone, one at a time; the chaos run prints its faults and audit)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p outbox-tests -p outbox-cli --all-features --locked --no-fail-fast \
    --run-ignored only --test-threads 1 --success-output final
else
  cargo test -p outbox-tests -p outbox-cli --all-features --locked --no-fail-fast -- --ignored \
    --test-threads 1 --nocapture
fi

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --locked --no-fail-fast
else
  cargo test --workspace --all-features --locked --no-fail-fast
fi
