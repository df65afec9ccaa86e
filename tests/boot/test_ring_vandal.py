"""A hostile guest that writes garbage into a virtqueue: the device breaks, vmrun does not.

DESIGN invariant 1: a descriptor loop, an out-of-range address or a malformed request gives
the device an error status, never a crash of the VMM. The workload here (ring_vandal.c,
built static and carried in a user initramfs) is a virtio driver of its own for the implicit
virtio-rng (its guest driver unbound, so that /dev/mem maps its window): rings and buffers
in its own locked pages, found through /proc/self/pagemap (guest RAM is out of /dev/mem's
reach). Round after round, each after a reset, it offers the device a looping chain, a
buffer outside guest RAM, an available idx far ahead, a device-readable buffer on the rng's
queue of writable ones, and an indirect table inside an indirect table; each must end in
DEVICE_NEEDS_RESET with a configuration-change interrupt and nothing written. Good chains
before and after (one through an indirect table) must come back filled: a reset repairs the
device. The program exits 42 only when every expectation held; vmrun must return exactly
that, having written no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guest_program import guest_program_initramfs, run_guest_driver

from runner.arch.x86_64 import layout

pytestmark = pytest.mark.boot

RNG_DEVICE = "LNRO0005:00"  # the DSDT's first virtio-mmio window: the rng, with no console
SOURCE = Path(__file__).with_name("ring_vandal.c")
BAD_ROUNDS = ("loop", "outside-ram", "avail-ahead", "readable", "nested-indirect")
ROUNDS = ("good", *BAD_ROUNDS, "good-again", "good-indirect")


def test_garbage_in_a_virtqueue_breaks_the_device_and_not_vmrun(tmp_path: Path) -> None:
    vm = tmp_path / "vm.toml"
    vm.write_text(
        "disable_implicit_console = true\n"
        'serial_consoles = [{ output = "stdout" }]\n'
        "[machine]\nvcpu_count = 1\nmem_size_mib = 256\n"
        f'[kernel]\ninitramfs = "{guest_program_initramfs(SOURCE, tmp_path)}"\n'
    )
    vandal = f"/ring_vandal {layout.VIRTIO_MMIO_START:#x}"
    report = run_guest_driver(vm, RNG_DEVICE, vandal, ROUNDS, tmp_path)
    # What the device was seen to do, as the program printed it: each bad round needed a
    # reset (status bit 64) and raised the configuration-change interrupt (bit 2), used
    # nothing and wrote nothing; each good round came back with 512 bytes written.
    by_round = dict(line.split(": ", 1) for line in report)
    for name in BAD_ROUNDS:
        fields = by_round[f"round {name}"].split()
        assert int(fields[1], 16) & 64 and int(fields[3], 16) & 2, (name, fields)
        assert fields[fields.index("idx") + 1] == "0", (name, fields)
        assert fields[fields.index("bytes") + 1] == "0:", (name, fields)
    for name in ("good", "good-again", "good-indirect"):
        fields = by_round[f"round {name}"].split()
        assert not int(fields[1], 16) & 64, (name, fields)
        assert fields[fields.index("len") + 1] == "512", (name, fields)
