#!/usr/bin/env bash
# The decoder's fuzz step: part of the test command (tests/run.sh), and runnable alone.
#
# For each target it does two things, and either one failing fails this script:
#   1. replays every known crashing input: the committed regressions in decoder/fuzz/regressions/<target>/
#      and whatever an earlier local run left in decoder/fuzz/artifacts/<target>/ (crash-*, oom-*,
#      timeout-*, leak-*). A bug that a fuzzer found once is found again at once, not by luck.
#   2. fuzzes for FUZZ_SECONDS (default 20) a target. libFuzzer exits non-zero when it finds a crash and
#      writes the input to artifacts/; that exit status is this script's, never swallowed.
#
# How the step was proven to fail (repeat it the same way): add to the top of the closure in
# decoder/fuzz/fuzz_targets/accumulator.rs
#     if data.starts_with(b"PLANTED") { panic!("planted crash"); }
# then `printf 'PLANTED' > decoder/fuzz/artifacts/accumulator/crash-planted` and run `bash tests/fuzz.sh`:
# it stops in step 1 with "fuzz: accumulator crashes on a known input" and exit status 1. Delete the
# artifact and run again: step 2 finds the crash by itself within seconds ("fuzz: accumulator found a
# crash"), exit status 1. Revert the planted line afterwards.
#
# Usage: bash tests/fuzz.sh [target...]   (default: every target)
set -euo pipefail
cd "$(dirname "$0")/../decoder/fuzz"

: "${FUZZ_SECONDS:=20}"
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 enables them on this stable toolchain, for this
# build only.
export RUSTC_BOOTSTRAP=1

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(accumulator record)

for target in "${targets[@]}"; do
  mkdir -p "artifacts/$target" "regressions/$target"

  known=()
  while IFS= read -r -d '' f; do known+=("$f"); done < <(
    find "regressions/$target" "artifacts/$target" -type f \
      \( -path 'regressions/*' -o -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) \
      ! -name '.gitkeep' -print0 | sort -z)
  if [ "${#known[@]}" -gt 0 ]; then
    echo "fuzz: $target: replaying ${#known[@]} known input(s)"
    if ! cargo fuzz run "$target" "${known[@]}" -- -runs=1 >"artifacts/$target.replay.log" 2>&1; then
      tail -n 30 "artifacts/$target.replay.log"
      echo "fuzz: $target crashes on a known input (full log: decoder/fuzz/artifacts/$target.replay.log)" >&2
      exit 1
    fi
  fi

  echo "fuzz: $target: ${FUZZ_SECONDS} s"
  log="artifacts/$target.log"
  if ! cargo fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 >"$log" 2>&1; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 20 >&2
    echo "fuzz: $target found a crash (full log: decoder/fuzz/$log; the input is in decoder/fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E '^Done|stat::number_of_executed_units' "$log"
done
