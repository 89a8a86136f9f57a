# Sourced by the appliance scripts (packaging/test-deb.sh, images/build.sh, images/test-boot.sh):
# what they share, so each states only its own steps.

# Exits 2 unless run as root; $1 names the script in the message.
require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$1: run as root (debootstrap, chroot and systemd-nspawn need it)" >&2
    exit 2
  fi
}

# Installs from Debian the packages of the commands missing here; each argument is command:package.
install_missing() {
  local tool need=()
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
}

# One check: runs the command after the description and prints "ok" or "FAIL" before it.
passed=0
failed=0
check() {
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then
    echo "ok    $what"
    passed=$((passed + 1))
  else
    echo "FAIL  $what"
    failed=$((failed + 1))
  fi
}

# The last line of a test script: the counts, and its exit status (1 on any failure).
checks_summary() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

# The Debian mirror to debootstrap from: $DEBIAN_MIRROR if set, else the first (non-security) mirror
# this machine's apt already uses, so the scripts fetch from wherever the machine is allowed to.
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && [ -z "$uri" ] && uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f")
  done
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  fi
  if [ -z "$uri" ]; then
    echo "no Debian mirror found in /etc/apt; set DEBIAN_MIRROR" >&2
    return 1
  fi
  echo "$uri"
}
