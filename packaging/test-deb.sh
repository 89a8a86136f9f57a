#!/usr/bin/env bash
# The Debian package on a clean Debian 12 root (a debootstrap chroot, as root): install, upgrade with
# a spool and an edited config in place, remove, purge. Every check prints ok or FAIL; the script
# ends with "N passed, N failed" and exits 1 on any failure.
#
# Takes about 6 minutes here (debootstrap and the release build dominate), so it is not part of
# tests/run.sh; CI calls it as a step of its own: bash packaging/test-deb.sh
# Needs: root, debootstrap (installed from Debian when missing), cargo-deb (build-deb.sh installs it).
# DEB_BUILD_ARGS=--no-build uses target/release/venue-node as it is instead of building it first.
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/lib.sh
require_root test-deb.sh
install_missing debootstrap:debootstrap

work=$(mktemp -d /tmp/venue-deb-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"
in_root() { chroot "$root" "$@"; }
# Names as the chroot knows them: the host has no user venue-node.
owner_mode() { [ "$(chroot "$root" stat -c '%U:%G %a' "$1")" = "$2" ]; }
# The state an upgrade and a remove must keep: the edited config, the node's id and the spool.
kept_state() { (cd "$root" && sha256sum etc/venue-node/venue-node.toml var/lib/venue-node/node-id var/lib/venue-node/spool/*); }
state_kept() { [ "$(kept_state)" = "$(cat "$work/hashes")" ]; }

echo "==> building the package twice: the release, and an upgrade of it (revision 2)"
start=$(date +%s)
# DEB_BUILD_ARGS=--no-build packages the release binary already built, e.g. by a CI step before.
# shellcheck disable=SC2086
bash packaging/build-deb.sh ${DEB_BUILD_ARGS:-} -o "$work/venue-node-old.deb"
bash packaging/build-deb.sh --no-build --deb-revision 2 -o "$work/venue-node-new.deb"
echo "package: $(stat -c %s "$work/venue-node-old.deb") bytes"

echo "==> a clean Debian 12 root"
debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log"; exit 1; }
cp "$work"/venue-node-*.deb "$root/tmp/"

echo "==> install"
in_root dpkg -i /tmp/venue-node-old.deb
check "the binary runs" in_root venue-node --version
check "system user venue-node, no login shell" \
  bash -c "chroot '$root' getent passwd venue-node | grep -q ':/var/lib/venue-node:/usr/sbin/nologin$'"
check "the user is in no group but its own" bash -c "[ \"\$(chroot '$root' id -nG venue-node)\" = venue-node ]"
check "spool directory venue-node:venue-node 0700" owner_mode /var/lib/venue-node "venue-node:venue-node 700"
check "config root:venue-node 0640" owner_mode /etc/venue-node/venue-node.toml "root:venue-node 640"
check "the default config checks clean" in_root venue-node config check /etc/venue-node/venue-node.toml
check "the unit is installed" test -f "$root/lib/systemd/system/venue-node.service"
check "the service is enabled (no systemd running: not started)" \
  test -L "$root/etc/systemd/system/multi-user.target.wants/venue-node.service"
check "doctor finds the udev rule" \
  bash -c "chroot '$root' venue-node doctor | grep -q '^OK    udev rule /usr/lib/udev/rules.d/71-venue-node-decoders.rules is installed'"

echo "==> upgrade, with a spool written by the release and an edited config"
cp -a node/tests/fixtures/release-0.1.0/data/. "$root/var/lib/venue-node/"
in_root chown -R venue-node:venue-node /var/lib/venue-node
sed -i 's/^track_id = .*/track_id = "site-edit"/' "$root/etc/venue-node/venue-node.toml"
kept_state >"$work/hashes"
events_before=$(in_root venue-node spool stats --data-dir /var/lib/venue-node | awk '$1 == "events" {print $2}')
in_root dpkg -i /tmp/venue-node-new.deb
check "the upgrade is installed (0.1.0-2)" \
  bash -c "chroot '$root' dpkg-query -W -f '\${Version}' venue-node | grep -qx '0.1.0-2'"
check "the edited config and the spool are unchanged" state_kept
check "the new binary reads every event of the old spool ($events_before)" \
  bash -c "[ '$events_before' -gt 0 ] && chroot '$root' venue-node spool stats --data-dir /var/lib/venue-node | grep -q '^  events *$events_before '"

echo "==> remove: program gone, spool and config kept"
in_root dpkg --remove venue-node
check "the binary is gone" test ! -e "$root/usr/bin/venue-node"
check "the spool and config stay" state_kept

echo "==> purge: spool and config gone, user kept"
in_root dpkg --purge venue-node
check "the spool is deleted" test ! -e "$root/var/lib/venue-node"
check "the config is deleted" test ! -e "$root/etc/venue-node"
check "the service is no longer enabled" test ! -e "$root/etc/systemd/system/multi-user.target.wants/venue-node.service"
check "the system user stays" in_root getent passwd venue-node

echo "test-deb: $(($(date +%s) - start)) s"
checks_summary
