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
  $sudo apt-get update -qq || echo "apt-get update failed; installing from the package lists already here" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# nats-server: the uplink's JetStream tests start a real one.
if ! command -v nats-server >/dev/null 2>&1; then
  say "installing nats-server (Debian package)"
  apt_install nats-server
fi
# chromium + chromedriver: the live display's pages are tested in a real headless browser.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  say "installing chromium and chromium-driver (Debian packages)"
  apt_install chromium chromium-driver
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

say "fuzz: known crashing inputs, then ${FUZZ_SECONDS:=20} s a target"
bash tests/fuzz.sh

say "all green"
