#!/usr/bin/env bash
# Every test of venue-node, from a fresh Debian machine with the Rust toolchain: installs what the tests
# need when it is missing, then runs formatting, lints, the whole test suite and a short fuzz smoke.
# `.ci/run` calls exactly this. Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# nats-server: the uplink's JetStream tests start a real one.
if ! command -v nats-server >/dev/null 2>&1; then
  say "installing nats-server (Debian package)"
  apt_install nats-server
fi
# cargo-fuzz: the decoder's fuzz smoke. The toolchain here is stable; cargo-fuzz needs nightly flags,
# which RUSTC_BOOTSTRAP=1 enables for this one build.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

say "formatting"
cargo fmt --all -- --check

say "lints"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "tests"
cargo test --workspace --quiet

say "fuzz smoke (${FUZZ_SECONDS:=20} s a target)"
for target in accumulator record; do
  (cd decoder/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>&1 \
    | grep -E 'Done|stat::number_of_executed_units|panicked|ERROR' || true)
  (cd decoder/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -runs=0 >/dev/null 2>&1) \
    || { echo "fuzz target $target failed: see decoder/fuzz/artifacts"; exit 1; }
done

say "all green"
