#!/usr/bin/env bash
# Fuzzes what reaches outbox from outside, coverage-guided with libFuzzer (cargo fuzz), each
# target for a bounded time: table names, routing templates, the CLI's configuration file,
# webhook signature headers, inbox message ids (the last against the three test databases).
#
#   scripts/fuzz.sh              every target, 60 s each (OUTBOX_FUZZ_SECONDS to change)
#   scripts/fuzz.sh inbox_ids    one target
#
# A failing input stops its target and is saved under fuzz/artifacts/<target>/; copy it to
# fuzz/regressions/<target>/ once fixed, so that the test suite replays it for ever. An input
# running over 10 s counts as a hang. Coverage-guided builds need nightly compiler flags: the
# nightly toolchain when rustup has one, else the stable compiler with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${OUTBOX_FUZZ_SECONDS:-60}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(table_name routing_template config_file webhook_signature inbox_ids)
fi

scripts/services.sh

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
if rustup run nightly rustc --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  echo "[fuzz] no nightly toolchain: building with the stable compiler and RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

# Safe Rust throughout (`unsafe_code = "forbid"`), so no sanitizer: libFuzzer's coverage, its
# timeout and the checks' assertions are what find failures.
failed=()
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  if ! "${fuzz[@]}" run "$target" --sanitizer none "$PWD/fuzz/corpus/$target" "$PWD/fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 \
    2>&1 | grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)'; then
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "[fuzz] FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "[fuzz] ${#targets[@]} targets, ${seconds}s each: no failure"
