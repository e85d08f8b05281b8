#!/usr/bin/env bash
# Runs every fuzz target of the workspace for RUNS executions (default 10
# million) and prints one Markdown row per target for docs/BENCHMARKS.md.
# Stable toolchain: cargo-fuzz with RUSTC_BOOTSTRAP=1 and no sanitizer.
#   cargo install cargo-fuzz
#   bench/fuzz-all.sh [RUNS]
# New interesting inputs land in each target's corpus; `cargo fuzz cmin`
# keeps the committed corpora small. A crash stops the script (exit 1) and
# leaves its input under <crate>/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10000000}
export RUSTC_BOOTSTRAP=1
echo "| crate | target | executions | seconds | crashes |"
echo "|---|---|---|---|---|"
for dir in schemas/fuzz crates/seglog/fuzz edge-agent/fuzz inference-hub/fuzz; do
  (cd "$dir" && cargo fuzz build --sanitizer none -O >/dev/null 2>&1)
  for target in $(cd "$dir" && cargo fuzz list); do
    start=$(date +%s)
    log=$(mktemp)
    if (cd "$dir" && cargo fuzz run --sanitizer none -O "$target" "corpus/$target" -- -runs="$RUNS" -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1); then
      crashes=0
    else
      crashes=1
    fi
    done_runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || echo "?")
    echo "| ${dir%/fuzz} | $target | $done_runs | $(( $(date +%s) - start )) | $crashes |"
    if [ "$crashes" != 0 ]; then tail -n 30 "$log" >&2; exit 1; fi
  done
done
