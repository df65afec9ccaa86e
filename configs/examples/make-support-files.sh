#!/bin/sh
# Remakes the small files the example VM files point at (they are committed; run this only
# to change them). Needs mkfs.ext4 (e2fsprogs), qemu-img (qemu-utils) and python3.
set -eu
cd "$(dirname "$0")"
mkdir -p disks initramfs share

# disks/root.img: a raw 64 KiB disk holding a genuine, empty ext4 file system (no journal:
# too small for one), for the examples whose root is on a block device.
rm -f disks/root.img
head -c 65536 /dev/zero > disks/root.img
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -O ^has_journal -N 16 -L root \
    -U 1b4e28ba-2fa1-11d2-883f-0016d3cca427 \
    -E nodiscard,hash_seed=1b4e28ba-2fa1-11d2-883f-0016d3cca428 disks/root.img

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
