"""The emulated host's kernel and initramfs, provisioned into the cache.

Kernel: Debian's generic kernel (it has 9p and kvm-amd as modules; the cloud flavour lacks
9p). Initramfs: busybox-static, the modules below in load order, and `HOST_INIT`. Both are
built once and cached under a key of everything they are made from.
"""

from __future__ import annotations

import hashlib
import lzma
import struct
import zlib
from pathlib import Path

import attrs

from runner import progress
from runner.boot import elf
from runner.boot.initramfs import Entry, compressed, cpio
from runner.cache import cache_dir, write_atomically
from runner.emulated.host_init import HOST_INIT
from runner.guest import debian

KERNEL_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"

# The bzImage's setup header (Documentation/arch/x86/boot.rst): setup sectors, and where its
# compressed payload is, from the protected-mode code's start.
_SETUP_SECTS = 0x1F1
_PAYLOAD_OFFSET = 0x248  # u32 payload_offset, u32 payload_length
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b"

# Load order matters: each module after the ones it needs (there is no depmod here).
MODULES = (
    "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_ring", "virtio", "virtio_pci",
    "virtio_console", "9pnet", "9pnet_virtio", "netfs", "fscache", "9p",
    "ccp", "irqbypass", "kvm", "kvm-amd",
)  # fmt: skip


@attrs.frozen
class HostImage:
    kernel: Path
    initramfs: Path


def provision() -> HostImage:
    """The kernel and initramfs of the emulated host, downloading and building what is
    missing from the cache (progress bars on stderr)."""
    kernel_deb = debian.fetch(debian.depends_of(KERNEL_PACKAGE))
    busybox_deb = debian.fetch(BUSYBOX_PACKAGE)
    key = hashlib.sha256(
        "\0".join([kernel_deb.name, busybox_deb.name, HOST_INIT, *MODULES, "pvh"]).encode()
    ).hexdigest()[:16]
    target = cache_dir("emulated-host", key)
    image = HostImage(target / "kernel", target / "initramfs.gz")
    if image.kernel.exists() and image.initramfs.exists():
        return image
    progress.slow("building the emulated KVM host's image (its kernel, busybox and modules)")
    kernel_tree = debian.unpack(kernel_deb)
    busybox_tree = debian.unpack(busybox_deb)
    (vmlinuz,) = (kernel_tree / "boot").glob("vmlinuz-*")
    release = vmlinuz.name.removeprefix("vmlinuz-")
    archive = cpio(_entries(kernel_tree / "lib" / "modules" / release, busybox_tree))
    write_atomically(image.initramfs, compressed(archive))
    write_atomically(image.kernel, _boot_kernel(vmlinuz.read_bytes()))
    return image


def _boot_kernel(bzimage: bytes) -> bytes:
    """The kernel QEMU boots fastest: the vmlinux inside the bzImage, entered through its PVH
    note, where the standard library can decompress it; else the bzImage. Debian's is XZ,
    whose decompression under TCG took about 6 of the emulated host's 13 s to its job."""
    setup_sects = bzimage[_SETUP_SECTS] or 4
    offset, length = struct.unpack_from("<II", bzimage, _PAYLOAD_OFFSET)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    try:
        if payload.startswith(_XZ_MAGIC):
            vmlinux = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(_GZIP_MAGIC):
            vmlinux = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        else:
            return bzimage
        if elf.parse(vmlinux).pvh_entry is not None:
            return vmlinux
    except (lzma.LZMAError, zlib.error, elf.ElfError):
        pass
    return bzimage


def _entries(module_dir: Path, busybox_tree: Path) -> list[Entry]:
    entries = [Entry.directory(d) for d in ("bin", "etc", "lib", "lib/modules")]
    entries.append(
        Entry.file("bin/busybox", (busybox_tree / "bin" / "busybox").read_bytes(), 0o755)
    )
    entries.append(Entry.symlink("bin/sh", "busybox"))
    entries.append(Entry.file("init", HOST_INIT.encode(), 0o755))
    for name in MODULES:
        entries.append(Entry.file(f"lib/modules/{name}.ko", _module(module_dir, name).read_bytes()))
    entries.append(Entry.file("etc/modules", "\n".join(MODULES).encode() + b"\n"))
    return entries


def _module(module_dir: Path, name: str) -> Path:
    for candidate in {name, name.replace("-", "_"), name.replace("_", "-")}:
        found = list((module_dir / "kernel").rglob(f"{candidate}.ko"))
        if found:
            return found[0]
    raise debian.PackageError(f"the host kernel package has no module {name}")
