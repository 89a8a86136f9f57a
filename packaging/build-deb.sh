#!/usr/bin/env bash
# Builds the Debian package from a release build: target/debian/venue-node_<version>-1_amd64.deb.
# Installs cargo-deb (crates.io) when it is missing. Extra arguments go to cargo-deb, e.g.
#   bash packaging/build-deb.sh --deb-version 0.1.1 -o /tmp/venue-node_0.1.1.deb
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "installing cargo-deb" >&2
  cargo install cargo-deb --locked --quiet
fi
cargo deb -p node "$@"
