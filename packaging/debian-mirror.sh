# Sourced by packaging/test-deb.sh and images/build.sh: the Debian mirror to debootstrap from.
# $DEBIAN_MIRROR if set, else the first (non-security) mirror this machine's apt already uses, so
# the scripts fetch from wherever the machine is allowed to.
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
