#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a bounded time, then prints one line per
# target: executions, seconds, corpus size. `make fuzz` calls it; FUZZ_ARGS are passed to
# libFuzzer (default: 60 s per target; `-runs=10000000` for ten million executions).
#
# --sanitizer none: the code fuzzed here is the core, which forbids `unsafe` (the only
# `unsafe` is the filter's ABI module, never built for the fuzzer), so AddressSanitizer has
# nothing to find and would cost a third of the speed; what the fuzzer hunts is a panic (including
# arithmetic overflow: -a keeps debug assertions on) or a failed check in src/lib.rs.
set -euo pipefail
cd "$(dirname "$0")"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(credential path config key_set shared_record header_map request)
args=${FUZZ_ARGS:--max_total_time=60}
mkdir -p logs
cargo +nightly fuzz build -O -a --sanitizer none
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  start=$(date +%s)
  # shellcheck disable=SC2086
  if ! cargo +nightly fuzz run -O -a --sanitizer none "$t" "corpus/$t" "seeds/$t" -- \
      $args -print_final_stats=1 >"logs/$t.log" 2>&1; then
    tail -40 "logs/$t.log"
    echo "fuzz target $t FAILED: see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$')
  summary+=("$(printf '%-14s %12s executions  %5s s  corpus %s' "$t" "$execs" \
    "$(( $(date +%s) - start ))" "$(find "corpus/$t" -type f | wc -l)")")
  echo "${summary[-1]}"
done
echo "fuzz: ${#targets[@]} targets, no crash"
