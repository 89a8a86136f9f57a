#!/usr/bin/env bash
# Packs a root filesystem into a raw GPT disk image, with no loop device and no mount (mkfs.ext4 -d,
# mtools), so it runs in a container too. images/build.sh calls it:
#   bash images/disk.sh ROOTFS IMAGE ESP_MIB ROOT_MIB SPOOL_MIB
# Partitions, found by label (fstab, the boot entry):
#   1 venue-esp    FAT32  systemd-boot, the kernel and its initrd
#   2 venue-root   ext4   the root filesystem; an image upgrade rewrites this one (and the ESP)
#   3 venue-spool  ext4   /var/lib/venue-node, empty, owned by the service user; last, so
#                         systemd-repart can grow it to the rest of the disk at first boot
set -euo pipefail
rootfs=$1 img=$2 esp_mib=$3 root_mib=$4 spool_mib=$5
work=$(mktemp -d /tmp/venue-disk.XXXXXX)
trap 'rm -rf "$work"' EXIT
export MTOOLS_SKIP_CHECK=1

kernel=$(find "$rootfs/boot" -name 'vmlinuz-*' | sort -V | tail -1)
initrd=$(find "$rootfs/boot" -name 'initrd.img-*' | sort -V | tail -1)
efi="$rootfs/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
for f in "$kernel" "$initrd" "$efi"; do
  [ -n "$f" ] && [ -f "$f" ] || { echo "disk.sh: missing kernel, initrd or systemd-boot in $rootfs" >&2; exit 1; }
done

# The EFI system partition: systemd-boot as the removable-media loader, one entry, no menu.
truncate -s "${esp_mib}M" "$work/esp.img"
mkfs.vfat -F 32 -n VENUE-ESP "$work/esp.img" >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$work/esp.img" "$efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.img" "$kernel" ::/vmlinuz
mcopy -i "$work/esp.img" "$initrd" ::/initrd.img
printf 'default venue-node.conf\ntimeout 0\n' >"$work/loader.conf"
printf 'title venue-node\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=PARTLABEL=venue-root rw quiet\n' \
  >"$work/venue-node.conf"
mcopy -i "$work/esp.img" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$work/esp.img" "$work/venue-node.conf" ::/loader/entries/venue-node.conf

# The root filesystem, and the spool's, owned by the service user the package created.
mkfs.ext4 -q -L venue-root -d "$rootfs" "$work/root.img" "${root_mib}M"
owner=$(awk -F: '$1 == "venue-node" {print $3 ":" $4}' "$rootfs/etc/passwd")
[ -n "$owner" ] || { echo "disk.sh: no venue-node user in $rootfs" >&2; exit 1; }
mkfs.ext4 -q -L venue-spool -E "root_owner=$owner" "$work/spool.img" "${spool_mib}M"

# The disk: 1 MiB for the GPT, the partitions, 1 MiB for the backup GPT.
total=$((1 + esp_mib + root_mib + spool_mib + 1))
rm -f "$img"
truncate -s "${total}M" "$img"
sfdisk -q "$img" <<EOF
label: gpt
start=1MiB, size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=venue-esp
size=${root_mib}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=venue-root
size=${spool_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=venue-spool
EOF
dd if="$work/esp.img" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$img" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
dd if="$work/spool.img" of="$img" bs=1M seek=$((1 + esp_mib + root_mib)) conv=notrunc,sparse status=none
sfdisk -l "$img"
