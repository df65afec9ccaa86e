"""A hostile guest that sends a disk bad requests: each gets an error status, vmrun goes on.

DESIGN invariant 1, for virtio-blk: a request that names a sector beyond the disk's end, a
data length that is not whole sectors, a buffer outside guest RAM or an unknown type gets
VIRTIO_BLK_S_IOERR (UNSUPP for the type) in its status byte, never DEVICE_NEEDS_RESET and
never a crash of the VMM, and the next good request is served without a reset. The workload
here (blk_vandal.c, built static and carried in a user initramfs) is a virtio driver of its
own for the VM's one disk (virtio_blk unbound, so that /dev/mem maps its window): it checks
the capacity in the config space, reads the host's pattern at sector 0 and at the last
sector, sends each bad request followed by a good read, writes a sector and reads it back.
The program exits 42 only when every expectation held; vmrun must return exactly that,
having written no traceback, and the image must hold the written sector and nothing else
changed (a bad write partly beyond the end must not have written its first sector).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guest_program import guest_program_initramfs, run_guest_driver

from runner.config.load import load
from runner.config.slots import VirtioSlot, virtio_slots

pytestmark = pytest.mark.boot

SOURCE = Path(__file__).with_name("blk_vandal.c")
SECTOR = 512
SECTORS = 8192  # a 4 MiB disk
WRITE_SECTOR = 3  # blk_vandal's good-write sector
WRITTEN = (b"blk_vandal was here\n" * 26)[:SECTOR]  # what it writes there (WRITE_LINE)
IOERR, UNSUPP = 1, 2
BAD_ROUNDS = {
    "beyond-end": IOERR,
    "partly-beyond": IOERR,
    "partly-beyond-write": IOERR,
    "odd-length": IOERR,
    "outside-ram": IOERR,
    "unknown-type": UNSUPP,
}
READS = ("good-read", "good-read-last", "good-read-back")
ROUNDS = ("start", "good-read", "good-read-last", *BAD_ROUNDS, "good-write", "good-read-back")


def host_pattern(sectors: int) -> bytes:
    """Byte i of sector s is (s * 31 + i) & 0xff, as blk_vandal.c expects."""
    cycle = bytes(range(256)) * 3
    return b"".join(cycle[s * 31 % 256 :][:SECTOR] for s in range(sectors))


def disk_window(vm: Path) -> VirtioSlot:
    """The disk's virtio slot, as the builder and the DSDT order them (the console, the rng,
    then the others; which come before the disk depends on the file, so it is asked)."""
    (disk,) = [s for s in virtio_slots(load(str(vm)).resources) if s.kind.name == "block"]
    return disk


def test_bad_disk_requests_get_an_error_status_and_vmrun_goes_on(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    before = host_pattern(SECTORS)
    image.write_bytes(before)
    vm = tmp_path / "vm.toml"
    vm.write_text(
        "disable_implicit_console = true\n"
        'serial_consoles = [{ output = "stdout" }]\n'
        "[machine]\nvcpu_count = 1\nmem_size_mib = 256\n"
        f'[kernel]\ninitramfs = "{guest_program_initramfs(SOURCE, tmp_path)}"\n'
        f'[[block]]\nid = "vandal"\npath = "{image}"\n'
    )
    disk = disk_window(vm)
    # Linux names the DSDT's LNRO0005 devices by their order (the slot's), in hex.
    device = f"LNRO0005:{disk.slot:02x}"
    vandal = f"/blk_vandal {disk.mmio_base:#x} {SECTORS}"
    report = run_guest_driver(vm, device, vandal, ROUNDS, tmp_path)
    # What the device was seen to do, as the program printed it.
    by_round = dict(line.removesuffix(": ok").split(": ", 1) for line in report)
    assert by_round["round start"] == f"capacity {SECTORS} sectors", by_round
    for name, status in BAD_ROUNDS.items():
        want = f"bad status 0x{status:02x} len 1, then good status 0x00 len 513"
        assert by_round[f"round {name}"] == want, (name, by_round)
    for name in READS:
        assert by_round[f"round {name}"] == "status 0x00 len 513", (name, by_round)
    assert by_round["round good-write"] == "status 0x00 len 1", by_round
    # On the host: the written sector, and every other byte as it was.
    after = image.read_bytes()
    assert len(after) == len(before)
    start, end = WRITE_SECTOR * SECTOR, (WRITE_SECTOR + 1) * SECTOR
    assert after[start:end] == WRITTEN
    assert after[:start] == before[:start] and after[end:] == before[end:]
