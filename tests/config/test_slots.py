"""The slot planner and the one table of device kinds (runner/config/slots.py)."""

from __future__ import annotations

from pathlib import Path

from expect import passes

from runner import builder
from runner.config.slots import DEVICE_KINDS, State, virtio_slots
from runner.unsupported import device_refusals


def test_slots_come_in_the_table_s_order_each_with_its_own_config(write_vm, tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(bytes(4096))
    vm = passes(
        write_vm(f"""\
        [[block]]
        id = "a"
        path = "{tmp_path}/disk.img"
        read_only = true
        [[block]]
        id = "b"
        path = "{tmp_path}/disk.img"
        read_only = true
        [vsock]
        guest_cid = 3
        """)
    )
    slots = virtio_slots(vm.resources)
    assert [(s.kind.name, s.index, s.slot) for s in slots] == [
        ("console", 0, 0), ("rng", 0, 1), ("balloon", 0, 2), ("block", 0, 3), ("block", 1, 4),
        ("vsock", 0, 5),
    ]  # fmt: skip
    console, rng, balloon, first, second, vsock = slots
    assert (console.config, console.where) == (None, ("disable_implicit_console",))
    assert (rng.config, rng.where) == (None, ())
    assert (balloon.config, balloon.where) == (None, ())
    assert (first.config.id, first.where) == ("a", ("block", 0))
    assert (second.config.id, second.where) == ("b", ("block", 1))
    assert (vsock.config.guest_cid, vsock.where) == (3, ("vsock",))
    assert [s.mmio_base for s in slots] == [0xD000_0000 + 0x1000 * n for n in range(6)]
    assert [s.irq for s in slots] == [5, 6, 7, 9, 10, 11]  # not 8: the RTC's


def test_without_a_console_the_rng_has_the_first_window(write_vm) -> None:
    # Boot tests unbind the rng's driver by its platform device, the DSDT's first window.
    vm = passes(write_vm("disable_implicit_console = true\n"))
    assert [(s.kind.name, s.slot) for s in virtio_slots(vm.resources)] == [
        ("rng", 0), ("balloon", 1)
    ]  # fmt: skip


def test_the_builder_builds_exactly_the_kinds_the_table_calls_built() -> None:
    built = {kind.name for kind in DEVICE_KINDS if kind.state is State.BUILT}
    assert built == set(builder.VIRTIO_BACKENDS) == {"block", "console", "rng", "balloon"}


def test_every_kind_not_built_is_refused_where_the_file_declares_it(write_vm) -> None:
    vm = passes(
        write_vm("""\
        snd_device = true
        [[input_backends]]
        device = "/dev/null"
        [[input_backends]]
        device = "/dev/zero"
        [[virtio_consoles]]
        type = "auto"
        """)
    )
    assert [(p.path, p.message) for p in device_refusals(vm.resources)] == [
        (("snd_device",), "virtio-snd is not supported by this vmrun build"),
        (("input_backends", 0), "virtio-input is not supported by this vmrun build"),
        (("input_backends", 1), "virtio-input is not supported by this vmrun build"),
    ]
