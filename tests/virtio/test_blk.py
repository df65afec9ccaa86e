"""virtio-blk through the virtio-mmio transport, the guest's side played by a spec-written
driver (tests/virtio/blk_guest.py), over real image files in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blk_guest import (
    FLAG_UNMAP,
    HEADER,
    OUTSIDE_RAM,
    S_IOERR,
    S_OK,
    S_UNSUPP,
    T_DISCARD,
    T_FLUSH,
    T_GET_ID,
    T_IN,
    T_OUT,
    T_WRITE_ZEROES,
    BlkDevice,
)
from driver import Buffer
from test_mmio_transport import wait_for

from runner.config import checks
from runner.config.devices import BlockDevice
from runner.devices.virtio.blk import (
    CONFIG,
    F_BLK_SIZE,
    F_DISCARD,
    F_FLUSH,
    F_RO,
    F_SEG_MAX,
    F_SIZE_MAX,
    F_WRITE_ZEROES,
    ID_BYTES,
    DiskError,
    DiskInUse,
    RawDisk,
)
from runner.devices.virtio.mmio import Reg
from runner.errors import VmrunError
from runner.kvm.memory import GuestMemory
from runner.kvm.native import lib

MIB = 1 << 20
DISK_BYTES = 4 * MIB
SECTORS = DISK_BYTES // 512


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    with GuestMemory.flat(0x800000) as memory:
        yield memory


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (DISK_BYTES // 256))
    return path


Make = Callable[..., BlkDevice]


@pytest.fixture
def make(memory: GuestMemory, image: Path) -> Iterator[Make]:
    devices: list[BlkDevice] = []

    def make(start: bool = True, **settings: object) -> BlkDevice:
        config = BlockDevice(id=str(settings.pop("id", "disk0")), path=str(image), **settings)  # type: ignore[arg-type]
        devices.append(BlkDevice(memory, config))
        if start:
            devices[-1].start()
        return devices[-1]

    yield make
    for device in devices:
        device.close()


def pattern(seed: int, length: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 251 for i in range(length))


def host_bytes(image: Path, sector: int, length: int) -> bytes:
    with open(image, "rb") as file:
        file.seek(sector * 512)
        return file.read(length)


# ---- what the device says it is ---------------------------------------------------------------


def test_the_registers_and_config_space_describe_the_disk(make: Make) -> None:
    device = make(start=False)
    assert device.guest.read(Reg.DEVICE_ID) == 2
    assert device.guest.read(Reg.QUEUE_NUM_MAX) == 256
    features = device.guest.features()
    wanted = F_SEG_MAX | F_SIZE_MAX | F_BLK_SIZE | F_FLUSH | F_DISCARD | F_WRITE_ZEROES
    assert features & 0xFFFFFFFF == wanted | 1 << 28 | 1 << 29  # and INDIRECT, EVENT_IDX
    fields = CONFIG.unpack(device.config())
    capacity, size_max, seg_max, *_, blk_size = fields[:7]
    assert (capacity, size_max, seg_max, blk_size) == (SECTORS, MIB, 254, 512)
    max_discard, discard_seg, alignment, max_zeroes, zeroes_seg, may_unmap = fields[14:20]
    assert max_discard > 0 and discard_seg > 0 and max_zeroes > 0 and zeroes_seg > 0
    assert alignment >= 1 and may_unmap == 1


def test_a_read_only_disk_offers_ro_and_neither_discard_nor_write_zeroes(make: Make) -> None:
    features = make(start=False, read_only=True).guest.features()
    assert features & F_RO
    assert not features & (F_DISCARD | F_WRITE_ZEROES)


def test_capacity_is_the_file_size_rounded_down_to_sectors(
    memory: GuestMemory, tmp_path: Path
) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(512 * 5 + 100))
    disk = RawDisk(BlockDevice(id="d", path=str(path)))
    try:
        assert disk.sectors == 5
    finally:
        disk.close()


# ---- reads and writes --------------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [1, 3])
def test_writes_reach_the_file_and_reads_return_it_at_several_sectors(
    make: Make, image: Path, pieces: int
) -> None:
    device = make()
    for seed, (sector, length) in enumerate(
        [(0, 512), (7, 4096), (100, 3 * 512), (SECTORS - 8, 4096), (SECTORS - 1, 512)]
    ):
        data = pattern(seed, length)
        answer = device.write(sector, data, pieces=pieces)
        assert (answer.status, answer.written) == (S_OK, 1)
        assert host_bytes(image, sector, length) == data
        answer = device.read(sector, length, pieces=pieces)
        assert (answer.status, answer.written, answer.data) == (S_OK, length + 1, data)
    assert not device.broken


def test_a_read_returns_what_the_file_holds(make: Make, image: Path) -> None:
    answer = make().read(3, 2048)
    assert answer.status == S_OK and answer.data == host_bytes(image, 3, 2048)


def test_many_requests_in_flight_at_once_all_complete(make: Make, image: Path) -> None:
    device = make()
    writes = {device.request(T_OUT, 16 * i, pattern(i, 8192), kick=False): i for i in range(48)}
    device.guest.notify()  # one notification for every chain
    answers = device.wait(48)
    assert sorted(answers) == sorted(writes)
    assert all(answer.status == S_OK for answer in answers.values())
    for i in range(48):
        assert host_bytes(image, 16 * i, 8192) == pattern(i, 8192)
    reads = {device.request(T_IN, 16 * i, in_length=8192, kick=False): i for i in range(80)}
    device.guest.notify()  # more chains than request slots: the rest wait in the ring
    answers = device.wait(80)
    for head, i in reads.items():
        assert answers[head].status == S_OK
        assert answers[head].data == (
            pattern(i, 8192) if i < 48 else host_bytes(image, 16 * i, 8192)
        )


# ---- GET_ID, FLUSH -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disk_id", "answer"),
    [
        ("disk0", b"disk0" + bytes(15)),
        ("abcdefghij0123456789", b"abcdefghij0123456789"),
        ("abcdefghij0123456789-and-more", b"abcdefghij0123456789"),
    ],
)
def test_get_id_answers_the_id_nul_padded_to_20_bytes(
    make: Make, disk_id: str, answer: bytes
) -> None:
    result = make(id=disk_id).do(T_GET_ID, in_length=20)
    assert (result.status, result.written, result.data) == (S_OK, 21, answer)


def test_get_id_into_a_shorter_buffer_gives_what_fits(make: Make) -> None:
    result = make(id="disk0").do(T_GET_ID, in_length=3)
    assert (result.status, result.written, result.data) == (S_OK, 4, b"dis")


@pytest.mark.parametrize(
    ("cache", "sync", "syncs"),
    [
        ("unsafe", "full", 0),
        ("unsafe", "relaxed", 0),
        ("writeback", "none", 0),
        ("writeback", "relaxed", 2),
        ("writeback", "full", 2),
    ],
)
def test_flush_does_on_the_host_what_cache_and_sync_say(
    make: Make, cache: str, sync: str, syncs: int
) -> None:
    device = make(cache=cache, sync=sync)
    device.write(0, pattern(1, 512))
    for _ in range(2):
        answer = device.do(T_FLUSH)
        assert (answer.status, answer.written) == (S_OK, 1)
    assert device.backend.syncs == syncs


# ---- discard and write zeroes ------------------------------------------------------------------


def test_discard_punches_a_hole_that_reads_back_as_zeroes(make: Make, image: Path) -> None:
    device = make()
    os.sync()
    before = os.stat(image).st_blocks
    answer = device.ranges(T_DISCARD, [(512, 1024, 0)])  # 512 KiB from 256 KiB on
    assert answer.status == S_OK
    assert os.stat(image).st_blocks <= before - 1024  # 512-byte blocks freed
    assert os.stat(image).st_size == DISK_BYTES
    assert device.read(512, 1024 * 512).data == bytes(1024 * 512)
    assert host_bytes(image, 511, 512) == bytes(range(256)) * 2  # around it: untouched
    assert host_bytes(image, 1536, 512) == bytes(range(256)) * 2


@pytest.mark.parametrize("flags", [0, FLAG_UNMAP])
def test_write_zeroes_zeroes_the_ranges(make: Make, image: Path, flags: int) -> None:
    device = make()
    answer = device.ranges(T_WRITE_ZEROES, [(10, 3, flags), (2000, 200, flags)])
    assert answer.status == S_OK
    assert host_bytes(image, 10, 3 * 512) == bytes(3 * 512)
    assert host_bytes(image, 2000, 200 * 512) == bytes(200 * 512)
    assert host_bytes(image, 13, 512) == bytes(range(256)) * 2
    assert device.read(2000, 4096).data == bytes(4096)
    assert os.stat(image).st_size == DISK_BYTES


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_write_zeroes_writes_zeroes_where_the_file_system_cannot_zero_a_range(
    memory: GuestMemory,
) -> None:
    # tmpfs punches holes but has no FALLOC_FL_ZERO_RANGE: without unmap, zeroes are written.
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as file:
        file.write(bytes(range(256)) * (DISK_BYTES // 256))
        file.flush()
        device = BlkDevice(memory, BlockDevice(id="shm", path=file.name))
        try:
            device.start()
            answer = device.ranges(T_WRITE_ZEROES, [(8, 300, 0), (1000, 8, FLAG_UNMAP)])
            assert answer.status == S_OK
            assert host_bytes(Path(file.name), 8, 300 * 512) == bytes(300 * 512)
            assert host_bytes(Path(file.name), 1000, 8 * 512) == bytes(8 * 512)
            assert host_bytes(Path(file.name), 308, 512) == bytes(range(256)) * 2
        finally:
            device.close()


@pytest.mark.parametrize(
    ("type", "segments", "status"),
    [
        (T_DISCARD, [(0, 8, FLAG_UNMAP)], S_UNSUPP),  # unmap is for write zeroes only
        (T_WRITE_ZEROES, [(0, 8, 2)], S_UNSUPP),  # an unknown flag
        (T_DISCARD, [(SECTORS - 4, 8, 0)], S_IOERR),  # partly beyond the end
        (T_WRITE_ZEROES, [(SECTORS, 1, 0)], S_IOERR),
        (T_WRITE_ZEROES, [(0, 8, 0), (2**64 - 1, 2, 0)], S_IOERR),  # wraps: nothing done
        (T_DISCARD, [(0, lib.VMRUN_BLK_MAX_DISCARD_SECTORS + 1, 0)], S_IOERR),
        (T_WRITE_ZEROES, [(i, 1, 0) for i in range(33)], S_IOERR),  # over max segments
    ],
)
def test_bad_discard_and_write_zeroes_change_nothing(
    make: Make, image: Path, type: int, segments: list[tuple[int, int, int]], status: int
) -> None:
    before = image.read_bytes()
    device = make()
    assert device.ranges(type, segments).status == status
    assert image.read_bytes() == before
    assert device.read(0, 512).status == S_OK  # and the device goes on


# ---- what a guest may get wrong: IOERR or UNSUPP, and the device goes on -------------------------


def test_a_read_only_disk_refuses_every_write_and_keeps_its_bytes(make: Make, image: Path) -> None:
    before = image.read_bytes()
    device = make(read_only=True)
    assert device.write(0, pattern(1, 512)).status == S_IOERR
    assert device.ranges(T_DISCARD, [(0, 8, 0)]).status == S_IOERR
    assert device.ranges(T_WRITE_ZEROES, [(0, 8, FLAG_UNMAP)]).status == S_IOERR
    assert image.read_bytes() == before
    assert device.read(0, 512).data == before[:512]
    assert device.do(T_FLUSH).status == S_OK


@pytest.mark.parametrize(
    ("sector", "length"),
    [(SECTORS, 512), (SECTORS - 1, 1024), (SECTORS - 8, 8192), (2**64 - 1, 512), (2**63, 512)],
)
@pytest.mark.parametrize("type", [T_IN, T_OUT])
def test_a_request_reaching_past_the_end_is_an_ioerr(
    make: Make, image: Path, type: int, sector: int, length: int
) -> None:
    before = image.read_bytes()
    device = make()
    if type == T_IN:
        answer = device.read(sector, length)
    else:
        answer = device.write(sector, pattern(2, length))
    assert (answer.status, answer.written) == (S_IOERR, 1)
    assert image.read_bytes() == before
    assert device.read(SECTORS - 1, 512).status == S_OK


@pytest.mark.parametrize("length", [100, 513, 1000])
def test_data_not_a_multiple_of_512_is_an_ioerr(make: Make, image: Path, length: int) -> None:
    before = image.read_bytes()
    device = make()
    assert device.write(0, pattern(3, length)).status == S_IOERR
    assert device.read(0, length).status == S_IOERR
    assert image.read_bytes() == before


def test_an_unknown_type_is_unsupp(make: Make) -> None:
    device = make()
    for type in (2, 14, 0x80000000, 99):
        assert device.do(type, 0, in_length=512).status == S_UNSUPP
    assert device.read(0, 512).status == S_OK


def test_a_short_header_or_a_wrong_layout_is_an_ioerr(make: Make, image: Path) -> None:
    before = image.read_bytes()
    device = make()
    status = device.heap.alloc(1, 1)
    header = device.put(HEADER.pack(T_IN, 0, 0)[:8])
    head = device.offer([Buffer(header, 8, False), Buffer(status, 1, True)], status)
    assert device.wait(1)[head].status == S_IOERR
    # A write with writable data, a read with readable data, a flush with data.
    assert device.do(T_OUT, 0, in_length=512).status == S_IOERR
    assert device.do(T_IN, 0, pattern(4, 512)).status == S_IOERR
    assert device.do(T_FLUSH, 0, pattern(4, 512)).status == S_IOERR
    assert image.read_bytes() == before


def test_a_chain_without_a_writable_buffer_is_returned_with_nothing_written(make: Make) -> None:
    device = make()
    head = device.offer([Buffer(device.put(HEADER.pack(T_FLUSH, 0, 0)), 16, False)], None)
    assert device.wait(1)[head].written == 0
    assert not device.broken and device.do(T_FLUSH).status == S_OK


def test_a_buffer_outside_guest_ram_is_an_ioerr_and_the_next_request_is_served(
    make: Make, image: Path
) -> None:
    before = image.read_bytes()
    device = make()
    status = device.heap.alloc(1, 1)
    header = device.put(HEADER.pack(T_OUT, 0, 0))
    chain = [Buffer(header, 16, False), Buffer(OUTSIDE_RAM, 512, False), Buffer(status, 1, True)]
    head = device.offer(chain, status)
    answer = device.wait(1)[head]
    assert (answer.status, answer.written) == (S_IOERR, 1)
    header = device.put(HEADER.pack(T_IN, 0, 0))
    chain = [Buffer(header, 16, False), Buffer(OUTSIDE_RAM, 512, True), Buffer(status, 1, True)]
    head = device.offer(chain, status)
    assert device.wait(1)[head].status == S_IOERR
    assert image.read_bytes() == before
    assert not device.broken
    assert device.read(0, 512).data == before[:512]


def test_a_status_byte_outside_guest_ram_returns_the_chain_with_nothing_written(
    make: Make, image: Path
) -> None:
    before = image.read_bytes()
    device = make()
    header = device.put(HEADER.pack(T_OUT, 0, 0))
    data = device.put(pattern(5, 512))
    chain = [Buffer(header, 16, False), Buffer(data, 512, False), Buffer(OUTSIDE_RAM, 1, True)]
    head = device.offer(chain, None)
    assert device.wait(1)[head].written == 0
    assert image.read_bytes() == before  # no answer could be given: nothing done
    assert not device.broken
    assert device.read(0, 512).status == S_OK


def test_a_chain_the_engine_refuses_breaks_the_queue_and_only_it(make: Make) -> None:
    device = make()
    queue = device.queue
    assert queue is not None
    queue.add_raw_descriptor(0, device.heap.alloc(16), 16, 1, 0)  # a descriptor looping on itself
    queue.offer(0)
    queue.publish()
    device.guest.notify()
    wait_for(lambda: device.broken, "DEVICE_NEEDS_RESET")


# ---- direct I/O ------------------------------------------------------------------------------


@pytest.mark.parametrize(("align", "pieces"), [(1, 1), (4096, 3), (8, 5), (4096, 1)])
def test_direct_io_takes_unaligned_guest_buffers(
    make: Make, image: Path, align: int, pieces: int
) -> None:
    # tmp_path's file system must do O_DIRECT (ext4, xfs, btrfs and tmpfs since Linux 6.6 do).
    device = make(direct_io=True)
    data = pattern(6, 3 * 4096)
    assert device.write(8, data, align=align, pieces=pieces).status == S_OK
    assert host_bytes(image, 8, len(data)) == data
    answer = device.read(8, len(data), align=align, pieces=pieces)
    assert (answer.status, answer.data) == (S_OK, data)
    assert device.do(T_FLUSH).status == S_OK and device.backend.syncs == 1


# ---- stopping ----------------------------------------------------------------------------------


def test_a_reset_with_requests_in_flight_stops_promptly_and_joins_every_thread(
    make: Make, image: Path
) -> None:
    os.truncate(image, 64 * MIB)
    device = make()
    queue = device.queue
    assert queue is not None
    big = device.heap.alloc(MIB, 4096)
    chains = 200  # 3.2 GB of writes: 16 MiB each, sixteen buffers over one guest MiB
    for i in range(chains):
        status = device.heap.alloc(1, 1)
        header = device.put(HEADER.pack(T_OUT, 0, (i % 4) * 16 * MIB // 512))
        buffers = [Buffer(header, 16, False), *[Buffer(big, MIB, False)] * 16]
        device.offer([*buffers, Buffer(status, 1, True)], status, kick=False, indirect=True)
    device.guest.notify()
    wait_for(lambda: queue.used_idx >= 2, "the first writes")
    started = time.monotonic()
    device.reset()  # returns once every thread is joined
    assert time.monotonic() - started < 2
    done = queue.used_idx
    assert done < chains  # it stopped with requests in flight or waiting
    time.sleep(0.1)
    assert queue.used_idx == done  # nothing returned once stopped
    device.start()  # the driver sets the device up again and it serves
    assert device.read(0, 512).status == S_OK


# ---- the image on the host ----------------------------------------------------------------------


def test_a_writable_image_is_locked_against_another_open(image: Path) -> None:
    first = RawDisk(BlockDevice(id="a", path=str(image)))
    try:
        with pytest.raises(DiskInUse) as raised:
            RawDisk(BlockDevice(id="b", path=str(image), read_only=True))
        assert f"'b' ({image})" in str(raised.value)
        assert f"disk image {image} is in use by another process" in str(raised.value)
        assert isinstance(raised.value, VmrunError)
    finally:
        first.close()
    readers = [RawDisk(BlockDevice(id=f"r{i}", path=str(image), read_only=True)) for i in range(2)]
    try:
        with pytest.raises(DiskInUse):
            RawDisk(BlockDevice(id="w", path=str(image)))
    finally:
        for reader in readers:
            reader.close()


def test_images_that_cannot_be_used_are_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.img"
    with pytest.raises(DiskError, match=f"'d' \\({missing}\\): No such file"):
        RawDisk(BlockDevice(id="d", path=str(missing)))
    with pytest.raises(DiskError, match="not a regular file or a block device"):
        RawDisk(BlockDevice(id="d", path=str(tmp_path), read_only=True))
    locked = tmp_path / "locked.img"
    locked.write_bytes(bytes(512))
    locked.chmod(0o444)
    if os.geteuid() != 0:  # root opens it anyway
        with pytest.raises(DiskError, match="Permission denied"):
            RawDisk(BlockDevice(id="d", path=str(locked)))


# ---- a host block device ------------------------------------------------------------------------


@pytest.fixture
def loop_device(image: Path) -> Iterator[Path]:
    """A loop device over `image` (root, and a kernel with loop devices: else a skip that
    says so)."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("a loop device needs root and losetup (util-linux)")
    made = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"no loop device here: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", str(device)], check=True)


@pytest.mark.parametrize("direct_io", [False, True])
def test_a_host_block_device_is_a_disk(
    memory: GuestMemory, image: Path, loop_device: Path, direct_io: bool
) -> None:
    # BLKGETSIZE64 for the capacity, BLKSSZGET under O_DIRECT, BLKDISCARD and BLKZEROOUT.
    config = BlockDevice(id="loop", path=str(loop_device), direct_io=direct_io)
    device = BlkDevice(memory, config)
    try:
        device.start()
        assert device.disk.sectors == SECTORS
        data = pattern(9, 8192)
        assert device.write(64, data).status == S_OK
        answer = device.read(64, len(data))
        assert (answer.status, answer.data) == (S_OK, data)
        assert device.ranges(T_WRITE_ZEROES, [(200, 16, 0)]).status == S_OK
        assert device.ranges(T_DISCARD, [(1024, 2048, 0)]).status == S_OK
        assert device.do(T_FLUSH).status == S_OK
    finally:
        device.close()
    os.sync()
    assert host_bytes(image, 64, len(data)) == data
    assert host_bytes(image, 200, 16 * 512) == bytes(16 * 512)
    assert host_bytes(image, 216, 512) == bytes(range(256)) * 2
    # A loop device's discard punches a hole in its backing file.
    assert host_bytes(image, 1024, 2048 * 512) == bytes(2048 * 512)


def test_validation_knows_the_serial_is_as_long_as_get_id_answers() -> None:
    # runner/config/checks.py cannot load the native module (validation stays light): its
    # copy of the serial's length must be the device's.
    assert checks.DISK_SERIAL_BYTES == ID_BYTES == 20
