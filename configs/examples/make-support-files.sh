#!/bin/sh
# Remakes the small files the example VM files point at (they are committed; run this only
# to change them). Needs mkfs.ext4 (e2fsprogs), qemu-img (qemu-utils), apt-get with
# Debian's package lists, dpkg-deb and python3.
set -eu
cd "$(dirname "$0")"
mkdir -p disks initramfs share

# disks/root.img: a raw 8 MiB disk holding an ext4 file system with a minimal userland
# (Debian's busybox-static and its applets), for the examples whose root is on a block device.
rm -f disks/root.img
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
(cd "$tree" && apt-get download -q busybox-static >/dev/null && dpkg-deb -x busybox-static_*.deb pkg)
mkdir -p "$tree/root/bin" "$tree/root/dev" "$tree/root/proc" "$tree/root/sys" "$tree/root/tmp" \
    "$tree/root/mnt" "$tree/root/etc"
cp "$tree/pkg/bin/busybox" "$tree/root/bin/busybox"
for applet in $("$tree/root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$tree/root/bin/$applet"
done
chmod 1777 "$tree/root/tmp"
find "$tree/root" -exec touch -h -d @1700000000 {} +
head -c 8388608 /dev/zero > disks/root.img
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -L root -d "$tree/root" \
    -U 1b4e28ba-2fa1-11d2-883f-0016d3cca427 \
    -E nodiscard,root_owner=0:0,hash_seed=1b4e28ba-2fa1-11d2-883f-0016d3cca428 disks/root.img

# disks/data.qcow2: a blank qcow2 data disk, 1 GiB virtual, a few KiB on the host.
rm -f disks/data.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 disks/data.qcow2 1G

# initramfs/motd.cpio.gz: an extra initramfs (gzip-compressed newc cpio) that adds /etc/motd.
python3 - <<'PY'
import gzip

def entry(name, mode, data=b"", ino=1):
    name_bytes = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name_bytes
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)

motd = b"Welcome to the vmrun machine example.\n"
archive = (
    entry("etc", 0o40755, ino=1)
    + entry("etc/motd", 0o100644, motd, ino=2)
    + entry("TRAILER!!!", 0, ino=0)
)
with open("initramfs/motd.cpio.gz", "wb") as f:
    f.write(gzip.compress(archive, mtime=0))
PY
