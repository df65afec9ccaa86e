"""GuestMemory: the one checked accessor in Python, vmrun_guest_ptr in C, and that they agree."""

from __future__ import annotations

import mmap
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.kvm import GuestMemory, GuestMemoryError, Region
from runner.kvm.native import ffi, lib

PAGE = mmap.PAGESIZE
U64 = 1 << 64

# Two regions with a gap (like RAM below and above an MMIO hole), and an adjacent third.
GAPPED = [(0, 4 * PAGE), (16 * PAGE, 2 * PAGE), (18 * PAGE, PAGE)]


def c_pointer(memory: GuestMemory, gpa: int, length: int) -> int | None:
    table, count = memory.native_regions
    pointer = lib.vmrun_guest_ptr(table, count, gpa, length)
    return None if pointer == ffi.NULL else int(ffi.cast("uintptr_t", pointer))


# ---- layouts --------------------------------------------------------------------------------


def test_flat_memory_is_zeroed_and_round_trips() -> None:
    with GuestMemory.flat(4 * PAGE) as memory:
        assert memory.read(0, 16) == bytes(16)
        memory.write(0x123, b"hello")
        assert memory.read(0x123, 5) == b"hello"
        memory.write(4 * PAGE - 2, bytearray(b"\xaa\xbb"))
        assert memory.read(4 * PAGE - 2, 2) == b"\xaa\xbb"
        assert memory.regions == (Region(0, 4 * PAGE),)
        assert memory.size == 4 * PAGE


def test_regions_are_sorted_and_mapped_separately() -> None:
    with GuestMemory(list(reversed(GAPPED))) as memory:
        assert [r.guest_addr for r in memory.regions] == [0, 16 * PAGE, 18 * PAGE]
        hosts = [host for _, host in memory.host_regions()]
        assert len(set(hosts)) == 3 and all(host % PAGE == 0 for host in hosts)
        memory.write(16 * PAGE, b"second")
        memory.write(18 * PAGE, b"third")
        assert memory.read(16 * PAGE, 6) == b"second"
        assert memory.read(18 * PAGE, 5) == b"third"
        assert memory.read(0, 6) == bytes(6)  # regions do not alias in the memfd


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ([], "at least one region"),
        ([(0, 0)], "page size"),
        ([(0, PAGE + 1)], "page size"),
        ([(1, PAGE)], "page size"),
        ([(-PAGE, PAGE)], "page size"),
        ([(0, 2 * PAGE), (PAGE, PAGE)], "overlap"),
        ([(U64 - PAGE, 2 * PAGE)], "beyond 2\\*\\*64"),
    ],
)
def test_bad_layouts_are_refused(regions: list[tuple[int, int]], message: str) -> None:
    with pytest.raises(GuestMemoryError, match=message):
        GuestMemory(regions)


def test_a_region_may_end_at_the_top_of_the_address_space() -> None:
    with GuestMemory([(U64 - PAGE, PAGE)]) as memory:
        memory.write(U64 - 1, b"\x01")
        assert memory.read(U64 - 1, 1) == b"\x01"
        with pytest.raises(GuestMemoryError):
            memory.read(U64 - 1, 2)
        assert c_pointer(memory, U64 - 1, 2) is None
        assert c_pointer(memory, U64 - 1, 1) is not None


# ---- the checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpa", "length"),
    [
        (4 * PAGE - 1, 2),  # runs past the end of the first region
        (4 * PAGE, 1),  # starts in the gap
        (8 * PAGE, 0),  # zero length, but in the gap
        (4 * PAGE, 0),  # zero length one past the end of a region
        (15 * PAGE, 2 * PAGE),  # starts in the gap, ends in a region
        (18 * PAGE - 1, 2),  # spans two adjacent regions
        (17 * PAGE, PAGE + 1),
        (19 * PAGE, 0),  # one past the last region
        (U64 - 1, 2),  # gpa + length wraps around 2**64
        (16 * PAGE, U64 - 1),  # the length wraps
        (0, U64 - 1),
        (-1, 1),
        (0, -1),
        (U64, 0),
        (0, U64),
    ],
)
def test_out_of_range_access_is_refused(gpa: int, length: int) -> None:
    with GuestMemory(GAPPED) as memory:
        with pytest.raises(GuestMemoryError):
            memory.read(gpa, length)
        if 0 <= length <= 8 * PAGE:
            with pytest.raises(GuestMemoryError):
                memory.write(gpa, b"\xff" * length)
        if 0 <= gpa < U64 and 0 <= length < U64:
            assert c_pointer(memory, gpa, length) is None
        # nothing was written anywhere
        assert all(memory.read(r.guest_addr, r.size) == bytes(r.size) for r in memory.regions)


@pytest.mark.parametrize(
    ("gpa", "length"),
    [
        (0, 0),
        (0, 4 * PAGE),
        (4 * PAGE - 1, 1),
        (4 * PAGE - 1, 0),
        (17 * PAGE, PAGE),
        (18 * PAGE, 0),
    ],
)
def test_in_range_access_is_allowed(gpa: int, length: int) -> None:
    with GuestMemory(GAPPED) as memory:
        assert memory.read(gpa, length) == bytes(length)
        memory.write(gpa, b"\x5a" * length)
        assert memory.read(gpa, length) == b"\x5a" * length
        assert c_pointer(memory, gpa, length) is not None


def test_write_length_is_the_datas_byte_count() -> None:
    with GuestMemory.flat(PAGE) as memory:
        words = memoryview(bytearray(8)).cast("I")  # 2 items, 8 bytes
        with pytest.raises(GuestMemoryError):
            memory.write(PAGE - 4, words)
        memory.write(PAGE - 8, words)


# ---- the C check agrees with the Python one -------------------------------------------------

_edges = sorted({e + d for a, s in GAPPED for e in (a, a + s) for d in (-2, -1, 0, 1, 2)})
_addresses = st.one_of(
    st.sampled_from([e for e in _edges if e >= 0]),
    st.integers(0, 20 * PAGE),
    st.integers(0, U64 - 1),
    st.integers(U64 - 2 * PAGE, U64 - 1),
)
_lengths = st.one_of(st.integers(0, 3 * PAGE), st.integers(0, U64 - 1), st.just(U64 - 1))


@settings(max_examples=400, deadline=None)
@given(gpa=_addresses, length=_lengths)
def test_c_and_python_checks_agree(gpa: int, length: int) -> None:
    with GuestMemory(GAPPED) as memory:
        pointer = c_pointer(memory, gpa, length)
        try:
            data = memory.read(gpa, length)
        except GuestMemoryError:
            assert pointer is None
            return
        assert pointer is not None
        region, host = next((r, h) for r, h in memory.host_regions() if r.guest_addr <= gpa < r.end)
        assert pointer == host + (gpa - region.guest_addr)
        assert ffi.buffer(ffi.cast("char *", pointer), length)[:] == data


def test_c_pointer_sees_python_writes() -> None:
    with GuestMemory(GAPPED) as memory:
        memory.write(16 * PAGE + 10, b"shared")
        pointer = c_pointer(memory, 16 * PAGE + 10, 6)
        assert pointer is not None
        assert ffi.buffer(ffi.cast("char *", pointer), 6)[:] == b"shared"


# ---- lifecycle --------------------------------------------------------------------------


def test_closed_memory_refuses_access_in_python_and_in_c() -> None:
    memory = GuestMemory(GAPPED)
    with memory:
        assert not memory.closed
    assert memory.closed
    memory.close()  # idempotent
    with pytest.raises(GuestMemoryError, match="closed"):
        memory.read(0, 1)
    with pytest.raises(GuestMemoryError, match="closed"):
        memory.host_regions()
    assert c_pointer(memory, 0, 1) is None
    assert "closed" in repr(memory)


# ---- huge pages -------------------------------------------------------------------------------


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of this process's mapping that starts at `address` (proc(5): `hg` is
    MADV_HUGEPAGE)."""
    with open("/proc/self/smaps") as smaps:
        lines = smaps.read().splitlines()
    start = None
    for line in lines:
        head = line.split(maxsplit=1)[0]
        if "-" in head and ":" not in head:
            start = int(head.split("-")[0], 16)
        elif line.startswith("VmFlags:") and start == address:
            return line.split()[1:]
    raise AssertionError(f"no mapping starts at {address:#x}")


@pytest.mark.skipif(
    not os.path.isdir("/sys/kernel/mm/transparent_hugepage"),
    reason="this kernel has no transparent huge pages (madvise refuses MADV_HUGEPAGE)",
)
def test_guest_ram_asks_for_huge_pages() -> None:
    # As QEMU does for its RAM: where the host allows huge shmem pages on request
    # (transparent_hugepage/shmem_enabled = advise), KVM maps the guest 2 MiB at a time.
    with GuestMemory(GAPPED) as memory:
        for _region, host in memory.host_regions():
            assert "hg" in _vm_flags(host)
