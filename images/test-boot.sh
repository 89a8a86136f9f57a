#!/usr/bin/env bash
# Boots the appliance with systemd-nspawn (systemd as PID 1, the hardened unit as installed by the
# package) and checks, each line ok or FAIL, ending with "N passed, N failed":
#   - venue-node reaches READY (Type=notify: active only after READY=1), as its own user;
#   - a simulated decoder plugged in inside (a PTY behind /dev/serial/by-id) is adopted and stored;
#   - the live display answers on port 80 (/healthz), and the node's status is live;
#   - the watchdog restarts a hung node (SIGSTOP);
#   - networkd, avahi and the journald cap are in place, timesyncd enabled;
#   - Debian 12's udev reads the package's rule for decoder adapters without a complaint;
#   - the spool, on its own directory (the spool partition on a real disk), survives a reboot.
# The container has a private network (loopback only): nothing it does reaches the LAN.
#
#   bash images/test-boot.sh [ROOTFS]
# Without ROOTFS it builds one first (IMAGE_DISK=0 images/build.sh): about 6 minutes in all here (the
# build about 5, mostly debootstrap; the boot and checks 45 s), so it is not part of tests/run.sh:
# CI calls it as a step of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/lib.sh
require_root test-boot.sh
install_missing systemd-nspawn:systemd-container bc:bc

start=$(date +%s)
work=$(mktemp -d /tmp/venue-boot-test.XXXXXX)
nspawn_pid=""
cleanup() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill "$nspawn_pid"
    wait "$nspawn_pid" || echo "the container exited with $? on cleanup"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

rootfs=${1:-}
if [ -z "$rootfs" ]; then
  IMAGE_DISK=0 bash images/build.sh "$work/image"
  rootfs="$work/image/rootfs"
fi
built=$(date +%s)

# Waits up to $1 seconds for the command after it to succeed; prints the seconds it took.
wait_for() {
  local limit=$1 t0
  shift
  t0=$(date +%s.%N)
  while ! "$@" >/dev/null 2>&1; do
    if (($(date +%s) - ${t0%.*} >= limit)); then
      return 1
    fi
    sleep 0.2
  done
  printf '%.1f\n' "$(echo "$(date +%s.%N) - $t0" | bc)"
}

# The spool directory stands in for the spool partition: outside the root filesystem, so a new
# image (a new rootfs) boots on the same spool.
spool="$work/spool"
owner=$(awk -F: '$1 == "venue-node" {print $3 ":" $4}' "$rootfs/etc/passwd")
install -d -m 0700 -o "${owner%:*}" -g "${owner#*:}" "$spool"

leader=""
in_ct() { nsenter -t "$leader" -a "$@"; }
boot() {
  systemd-nspawn -D "$rootfs" --boot --private-network --register=no --keep-unit -M venue-test \
    --bind="$spool:/var/lib/venue-node" >"$work/console-$1.log" 2>&1 &
  nspawn_pid=$!
  # The container's init is the process of nspawn's that runs systemd.
  leader=""
  for _ in $(seq 100); do
    if leader=$(pgrep -P "$nspawn_pid" -x systemd); then
      break
    fi
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "the container did not start"; tail -20 "$work/console-$1.log"; exit 1; }
}
node_active() { [ "$(in_ct systemctl is-active venue-node.service)" = active ]; }
passings() { in_ct venue-node spool export --data-dir /var/lib/venue-node --format csv --type decoder.passing | tail -n +2 | wc -l; }
has_passings() { [ "$(passings)" -gt 0 ]; }
events() { in_ct venue-node spool stats --data-dir /var/lib/venue-node | awk '$1 == "events" {print $2}'; }

echo "==> boot 1"
boot 1
boot_ready=$(wait_for 120 node_active) || { echo "FAIL  venue-node never reached READY"; tail -40 "$work/console-1.log"; in_ct journalctl -u venue-node --no-pager | tail -20; exit 1; }
check "venue-node reaches READY (Type=notify) in ${boot_ready} s from boot" node_active
main_pid=$(in_ct systemctl show -p MainPID --value venue-node.service)
check "it runs as user venue-node" bash -c "nsenter -t $leader -a cat /proc/$main_pid/status | grep -Eq '^Uid:\s+${owner%:*}\s'"
exposure=$(in_ct systemd-analyze security venue-node.service | awk '/Overall exposure/ {print $(NF-2), $(NF-1)}')
echo "      systemd-analyze security inside the image: ${exposure}"

echo "==> a simulated decoder plugged in"
# As udev would: the adapter's link in /dev/serial/by-id. The simulator runs as the service user,
# so its pseudo-terminal is the node's to open, as the udev rule makes a real adapter.
in_ct install -d -o venue-node /dev/serial /dev/serial/by-id
in_ct systemd-run --quiet --unit=venue-sim -p User=venue-node \
  venue-node simulate --pty /dev/serial/by-id/usb-Venue_Simulator_SIM0001-if00-port0 --rate 5 --quiet
plug_to_passing=$(wait_for 60 has_passings) || plug_to_passing=never
check "the simulator is adopted and its passings stored (${plug_to_passing} s from plug-in)" has_passings
# The unit's LimitNICE=-5 lets the decoder inputs' thread run at nice -5. systemd raises the limit
# only as far as the host lets it (that takes CAP_SYS_RESOURCE, which some sandboxes withhold; the
# node then stays at 0): the thread must have what its limit allows (field 19 of its stat).
check "the unit asks for LimitNICE=-5 (max nice 25)" \
  bash -c "[ \"\$(nsenter -t $leader -a systemctl show -p LimitNICE --value venue-node.service)\" = 25 ]"
nice_limit=$(in_ct awk '/^Max nice priority/ {print $4}' "/proc/$main_pid/limits")
want_nice=0
if [ "${nice_limit:-0}" -ge 25 ]; then want_nice=-5; fi
input_nice() {
  in_ct sh -c "for t in /proc/$main_pid/task/*; do [ \"\$(cat \$t/comm)\" = decoder-input ] && cut -d' ' -f19 \$t/stat; done"
}
input_as_allowed() { [ "$(input_nice)" = "$want_nice" ]; }
check "the decoder inputs' thread runs at nice $want_nice, as its max nice of ${nice_limit:-?} allows (it has $(input_nice))" input_as_allowed
doctor_sees() { in_ct venue-node doctor | grep -q '^      adopted .* <- /dev/serial/by-id/usb-Venue_Simulator_SIM0001-if00-port0'; }
# doctor reads the status file, which the node rewrites every second.
check "doctor shows the adopted decoder" wait_for 10 doctor_sees
check "the node's status is live" \
  bash -c "nsenter -t $leader -a venue-node spool stats --data-dir /var/lib/venue-node | grep -Eq 'updated [0-2] s ago'"
# No curl in the image: bash's /dev/tcp, inside the container's network namespace.
display_answers() {
  in_ct bash -c 'exec 3<>/dev/tcp/127.0.0.1/80 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && head -1 <&3' | grep -q ' 200'
}
check "the live display answers on port 80 (/healthz)" wait_for 20 display_answers

echo "==> the watchdog"
in_ct systemctl kill --kill-whom=main --signal=SIGSTOP venue-node.service
restarted() { [ "$(in_ct systemctl show -p NRestarts --value venue-node.service)" -ge 1 ] && node_active; }
watchdog=$(wait_for 90 restarted) || watchdog=never
check "a hung node (SIGSTOP) is restarted by the watchdog (${watchdog} s; WatchdogSec=30)" restarted
# The killed node never cleared its exclusive open (TIOCEXCL) of the simulator's pseudo-terminal, and
# a PTY keeps that flag while its other end is open: the new node gets EBUSY there, and probes again
# every 2 s. A real USB adapter is released when its last user dies, so the test plugs the
# simulator in again (a new PTY behind the same link), as a technician would re-seat the cable.
in_ct systemctl stop venue-sim.service
in_ct systemd-run --quiet --unit=venue-sim2 -p User=venue-node \
  venue-node simulate --pty /dev/serial/by-id/usb-Venue_Simulator_SIM0001-if00-port0 --rate 5 --quiet
after_restart=$(events)
more_events() { [ "$(events)" -gt "$after_restart" ]; }
check "storing again after the restart" wait_for 30 more_events

echo "==> the rest of the appliance"
check "systemd-networkd runs (DHCP and link-local)" bash -c "[ \"\$(nsenter -t $leader -a systemctl is-active systemd-networkd)\" = active ]"
check "avahi runs (venue-node.local)" bash -c "[ \"\$(nsenter -t $leader -a systemctl is-active avahi-daemon)\" = active ]"
check "the hostname is venue-node" bash -c "[ \"\$(nsenter -t $leader -a hostname)\" = venue-node ]"
check "timesyncd is enabled (it skips itself in a container)" bash -c "[ \"\$(nsenter -t $leader -a systemctl is-enabled systemd-timesyncd)\" = enabled ]"
check "journald is capped (SystemMaxUse=200M)" bash -c "nsenter -t $leader -a systemd-analyze cat-config systemd/journald.conf | grep -qx 'SystemMaxUse=200M'"
# The image's udev (Debian 12's) reads the package's rule without a complaint. No USB adapter is
# here, so `udevadm test` runs every rule against one of the container's ttys: it names the rules
# files it reads and prints any line of them it rejects or cannot carry out (an unknown key, group
# or attribute).
# Its exit status is not the verdict (a container cannot carry out every rule); it is kept with the
# output, which is shown when the check fails.
udevadm_out="$work/udevadm-test.txt"
rule_read_clean() {
  local status=0
  in_ct udevadm test --action=add /sys/class/tty/tty1 >"$udevadm_out" 2>&1 || status=$?
  echo "(udevadm test exited with $status)" >>"$udevadm_out"
  grep -q '^Reading rules file: /usr/lib/udev/rules.d/71-venue-node-decoders.rules$' "$udevadm_out" &&
    ! grep -q '71-venue-node-decoders.rules:[0-9]' "$udevadm_out"
}
failed_before=$failed
check "udev reads the decoders' rule without a complaint (udevadm test)" rule_read_clean
if [ "$failed" != "$failed_before" ]; then
  grep -E '71-venue-node|exited with' "$udevadm_out" | sed 's/^/      /'
fi
node_id=$(cat "$spool/node-id")
events_before=$(events)

echo "==> boot 2 on the same spool"
in_ct systemctl poweroff
wait "$nspawn_pid" || echo "the container exited with $?"
nspawn_pid=""
boot 2
check "READY again after a reboot" wait_for 120 node_active
check "the spool kept every event ($events_before) and the node its id" \
  bash -c "[ \"\$(nsenter -t $leader -a venue-node spool stats --data-dir /var/lib/venue-node | awk '\$1 == \"events\" {print \$2}')\" -ge $events_before ] && [ \"\$(cat $spool/node-id)\" = '$node_id' ]"
in_ct systemctl poweroff
wait "$nspawn_pid" || echo "the container exited with $?"
nspawn_pid=""

echo "figures: build $((built - start)) s, boot-to-READY ${boot_ready} s, plug-in to first stored passing ${plug_to_passing} s, watchdog restart ${watchdog} s, whole test $(($(date +%s) - start)) s"
checks_summary
