"""A root on a disk: the init's config names the disk's node, its file system and options."""

from __future__ import annotations

import pytest

from runner.config.devices import BlockDevice
from runner.config.model import BlockRoot, VmResources
from runner.guest.initramfs import disk_device, init_config


@pytest.mark.parametrize(
    ("index", "node"),
    [(0, "/dev/vda"), (1, "/dev/vdb"), (25, "/dev/vdz"), (26, "/dev/vdaa"), (27, "/dev/vdab"),
     (701, "/dev/vdzz"), (702, "/dev/vdaaa")],
)  # fmt: skip
def test_disks_are_named_as_virtio_blk_names_them(index: int, node: str) -> None:
    assert disk_device(index) == node


def _config_lines(resources: VmResources) -> list[str]:
    return init_config(resources, ["true"]).decode().splitlines()


def test_the_root_disk_is_found_by_its_place_in_the_list() -> None:
    disks = (BlockDevice(id="data", path="a.img"), BlockDevice(id="system", path="b.img"))
    root = BlockRoot(id="system", fs_type="xfs", options="noatime")
    lines = _config_lines(VmResources(block=disks, root=root))
    assert lines[lines.index("root block") :][:4] == [
        "root block",
        "root-device /dev/vdb",
        "root-fstype xfs",
        "root-options noatime",
    ]


@pytest.mark.parametrize(
    ("options", "expected"), [("", "ro"), ("noatime", "ro,noatime"), ("noatime,ro", "noatime,ro")]
)
def test_a_read_only_root_disk_is_mounted_read_only(options: str, expected: str) -> None:
    disks = (BlockDevice(id="root", path="r.img", read_only=True),)
    lines = _config_lines(VmResources(block=disks, root=BlockRoot(id="root", options=options)))
    assert f"root-options {expected}" in lines


def test_without_a_root_disk_the_root_is_the_initramfs() -> None:
    lines = _config_lines(VmResources(block=(BlockDevice(id="d", path="d.img"),)))
    assert "root initramfs" in lines
    assert not any(line.startswith("root-") for line in lines)
