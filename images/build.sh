#!/usr/bin/env bash
# Builds the venue-node appliance: Debian 12 "bookworm" that boots straight into a working node.
#
#   bash images/build.sh [OUT_DIR]          (as root; OUT_DIR defaults to /tmp/venue-node-image)
#
# Writes
#   OUT_DIR/rootfs/                   the root filesystem; images/test-boot.sh boots it with systemd-nspawn
#   OUT_DIR/venue-node-bookworm.img   a raw GPT disk to flash (images/README.md): an EFI system partition
#                                     with systemd-boot and the kernel, the root filesystem, and the spool
#                                     on a partition of its own that an image upgrade does not touch
# Environment
#   VENUE_DEB=FILE      use this venue-node .deb instead of building one (packaging/build-deb.sh)
#   IMAGE_DISK=0        stop after the root filesystem: no kernel, no disk image (what the boot test needs)
#   DEBIAN_MIRROR=URL   the mirror to debootstrap from (default: the one this machine's apt uses)
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/lib.sh

out=${1:-/tmp/venue-node-image}
disk=${IMAGE_DISK:-1}
rootfs="$out/rootfs"
# Partition sizes, MiB. The spool partition starts small to keep the image small; systemd-repart
# grows it to the rest of the disk at first boot (files/repart.d).
ESP_MIB=256
ROOT_MIB=2048
SPOOL_MIB=512

require_root build.sh
install_missing debootstrap:debootstrap mkfs.vfat:dosfstools mcopy:mtools sfdisk:fdisk

start=$(date +%s)
mkdir -p "$out"
if [ -e "$rootfs" ]; then
  echo "build.sh: $rootfs exists; remove it first (rm -rf $rootfs)" >&2
  exit 2
fi

deb=${VENUE_DEB:-}
if [ -z "$deb" ]; then
  echo "==> building the venue-node package"
  deb="$out/venue-node.deb"
  bash packaging/build-deb.sh -o "$deb"
fi

# systemd and udev: the init and the device manager; networkd + resolved: DHCP with a link-local
# fallback; timesyncd: time sync; avahi + nss-mdns: venue-node.local.
packages=systemd,systemd-sysv,systemd-resolved,systemd-timesyncd,dbus,udev,avahi-daemon,libnss-mdns,iproute2,ca-certificates,netbase,less
if [ "$disk" = 1 ]; then
  packages="$packages,linux-image-amd64,initramfs-tools,systemd-boot-efi,e2fsprogs"
fi
echo "==> debootstrap bookworm ($packages)"
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$(debian_mirror)" \
  >"$out/debootstrap.log" 2>&1 || { tail -30 "$out/debootstrap.log"; exit 1; }

echo "==> installing venue-node and the appliance's settings"
cp "$deb" "$rootfs/tmp/venue-node.deb"
chroot "$rootfs" dpkg -i /tmp/venue-node.deb
rm "$rootfs/tmp/venue-node.deb"
cp -r images/files/etc/. "$rootfs/etc/"
# The display on port 80, so staff open http://venue-node.local (the sysctl in files/ lets the
# unprivileged service bind it; avahi announces it).
printf '\n# The appliance image: the live display on port 80.\n[display]\nlisten = "0.0.0.0:80"\n' \
  >>"$rootfs/etc/venue-node/venue-node.toml"
echo venue-node >"$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvenue-node\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
# resolved answers DNS for the box: networkd hands it the DHCP server's resolvers.
ln -sf ../run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" systemctl enable systemd-networkd.service systemd-resolved.service \
  systemd-timesyncd.service avahi-daemon.service venue-node.service
chroot "$rootfs" apt-get clean
rm -rf "$rootfs/var/lib/apt/lists/"*

if [ "$disk" = 1 ]; then
  echo "==> the disk image"
  bash images/disk.sh "$rootfs" "$out/venue-node-bookworm.img" "$ESP_MIB" "$ROOT_MIB" "$SPOOL_MIB"
  ls -l "$out/venue-node-bookworm.img"
fi
du -sh "$rootfs"
echo "build.sh: done in $(($(date +%s) - start)) s: $out"
