"""The kernel modules the init loads before the root, for the devices vmrun attaches.

Debian's cloud kernel (the default) has its virtio drivers as modules, uncompressed; the init
loads them in the order given here, each after what it depends on (the modules' `depends=`,
read once when this list was written; the package ships no modules.dep: virtio_mmio,
virtio_balloon, virtio-rng, virtio_console and virtio_blk need virtio and virtio_ring).
virtio_console is loaded only for a VM with a virtio console, virtio_blk only for one with
disks, though the archive always holds them (one archive per kernel).
A kernel the file names (kernel.path) or libkrunfw's bundle brings its own drivers, built in
or in the file's own initramfs: nothing is added for those.

The modules go into the initramfs as one uncompressed archive, built once per kernel into
the cache (on the outer host, before the emulated host: runner/guest/provision.py).
"""

from __future__ import annotations

import zlib
from pathlib import Path, PurePosixPath

from runner import progress
from runner.boot.initramfs import Entry, cpio
from runner.cache import cache_dir, write_atomically
from runner.config.model import VmResources
from runner.guest.kernel import default_kernel

# Paths under lib/modules/RELEASE, in load order.
VIRTIO_CONSOLE_MODULE = "kernel/drivers/char/virtio_console.ko"
VIRTIO_BLK_MODULE = "kernel/drivers/block/virtio_blk.ko"
VIRTIO_MODULES = (
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/drivers/virtio/virtio_balloon.ko",
    "kernel/drivers/char/hw_random/virtio-rng.ko",
    VIRTIO_CONSOLE_MODULE,
    VIRTIO_BLK_MODULE,
)
GUEST_DIR = PurePosixPath("vmrun/modules")


def uses_default_kernel(resources: VmResources) -> bool:
    return resources.kernel.path is None and resources.kernel_bundle is None


def has_virtio_console(resources: VmResources) -> bool:
    return not resources.disable_implicit_console or bool(resources.virtio_consoles)


def guest_module_paths(resources: VmResources) -> list[str]:
    """Where the modules to load are in the initramfs, in load order."""
    if not uses_default_kernel(resources):
        return []
    paths = _guest_paths()
    if not has_virtio_console(resources):
        paths.remove(_guest_path(VIRTIO_CONSOLE_MODULE))
    if not resources.block:
        paths.remove(_guest_path(VIRTIO_BLK_MODULE))
    return paths


def _guest_path(name: str) -> str:
    return str(GUEST_DIR / PurePosixPath(name).name)


def _guest_paths() -> list[str]:
    return [_guest_path(name) for name in VIRTIO_MODULES]


def modules_archive(resources: VmResources) -> Path | None:
    """The cached archive of the default kernel's modules, built if missing; None for a
    kernel that brings its own drivers."""
    return default_modules_archive() if uses_default_kernel(resources) else None


def default_modules_archive() -> Path:
    """The archive of the default kernel's modules (in the cache; built if missing)."""
    kernel = default_kernel()
    identity = f"{kernel.modules}\n" + "\n".join(VIRTIO_MODULES) + "\n"
    name = f"modules-{kernel.release}-{zlib.crc32(identity.encode()):08x}"
    target = cache_dir("guest") / f"{name}.cpio"
    key = target.with_name(f"{name}.key")
    if not (target.exists() and key.exists() and key.read_text() == identity):
        progress.slow("packing the guest kernel's virtio modules")
        entries = [Entry.directory("vmrun"), Entry.directory(str(GUEST_DIR))]
        entries += [
            Entry.file(path, (kernel.modules / name).read_bytes(), 0o644)
            for path, name in zip(_guest_paths(), VIRTIO_MODULES, strict=True)
        ]
        write_atomically(target, cpio(entries))
        write_atomically(key, identity.encode())
    return target
