"""The default kernel's modules that the init loads: which, and in what order."""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

import pytest

from runner.config.devices import AutoVirtioConsole, BlockDevice
from runner.config.model import KernelConfig, VmResources
from runner.guest import modules
from runner.guest.debian import PackageError
from runner.guest.kernel import default_kernel

CONSOLE = "vmrun/modules/virtio_console.ko"
BLK = "vmrun/modules/virtio_blk.ko"


def test_virtio_console_is_loaded_for_the_implicit_console() -> None:
    paths = modules.guest_module_paths(VmResources())
    assert paths[-1] == CONSOLE
    assert paths == [p for p in modules._guest_paths() if p != BLK]


def test_virtio_blk_is_loaded_for_a_vm_with_disks() -> None:
    paths = modules.guest_module_paths(VmResources(block=(BlockDevice(id="d", path="d.img"),)))
    assert paths == modules._guest_paths()  # every module in the archive, in its order
    assert paths.index(BLK) > paths.index("vmrun/modules/virtio_mmio.ko")


def test_virtio_console_is_loaded_for_a_listed_console() -> None:
    resources = VmResources(disable_implicit_console=True, virtio_consoles=(AutoVirtioConsole(),))
    assert CONSOLE in modules.guest_module_paths(resources)


def test_no_virtio_console_without_a_console() -> None:
    paths = modules.guest_module_paths(VmResources(disable_implicit_console=True))
    assert CONSOLE not in paths
    assert paths == [p for p in modules._guest_paths() if p not in (CONSOLE, BLK)]  # order kept


def test_a_kernel_of_the_file_brings_its_own_drivers() -> None:
    assert modules.guest_module_paths(VmResources(kernel=KernelConfig(path="vmlinux"))) == []


def _module_name(path: str) -> str:
    return PurePosixPath(path).name.removesuffix(".ko").replace("-", "_")


def test_each_module_comes_after_what_it_depends_on() -> None:
    # Debian's package has no modules.dep (depmod makes it at install): each module's own
    # `depends=` in its .modinfo says the same.
    try:
        tree = default_kernel().modules  # downloaded once into the cache (SHA256 checked)
    except PackageError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the default kernel cannot be had here: {exc}")
    loaded: set[str] = set()
    for path in modules.VIRTIO_MODULES:
        found = re.search(rb"(?:^|\0)depends=([^\0]*)\0", (tree / path).read_bytes())
        assert found, f"{path} has no depends= in its .modinfo"
        needs = {name for name in found[1].decode().split(",") if name}
        assert needs <= loaded, f"{path} needs {needs - loaded} loaded before it"
        loaded.add(_module_name(path))
    assert {"virtio_console", "virtio_blk"} <= loaded
