"""The NBD client of native/virtio/nbd.c, through cffi: against qemu-storage-daemon serving
real qcow2 images (checked afterwards with qemu-img), and against a fake server
(tests/fake_nbd_server.py) for what the daemon never does."""

from __future__ import annotations

import errno
import itertools
import os
import random
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from fake_nbd_server import (
    DISC,
    FLAG_FUA,
    FLAG_NO_HOLE,
    FLUSH,
    READ,
    TRIM,
    WRITE,
    WRITE_ZEROES,
    FakeNbdServer,
)
from qcow2_images import allocated, check_clean, make_qcow2, raw_contents, require_daemon

from runner.devices.virtio.disk_export import DiskExport
from runner.kvm.native import ffi, lib

MiB = 1 << 20
GiB = 1 << 30
# No call on a dead or broken server may take longer than this.
PROMPT_S = 10.0
HAS_FLAGS = lib.VMRUN_NBD_FLAG_HAS_FLAGS
READ_ONLY = lib.VMRUN_NBD_FLAG_READ_ONLY
SEND_FLUSH = lib.VMRUN_NBD_FLAG_SEND_FLUSH
SEND_FUA = lib.VMRUN_NBD_FLAG_SEND_FUA
SEND_TRIM = lib.VMRUN_NBD_FLAG_SEND_TRIM
SEND_WRITE_ZEROES = lib.VMRUN_NBD_FLAG_SEND_WRITE_ZEROES


class Client:
    """One connection, with Python bytes in and out."""

    def __init__(self, socket_path: str, export: str = "disk") -> None:
        size = ffi.new("uint64_t *")
        flags = ffi.new("uint16_t *")
        handle = lib.vmrun_nbd_connect(socket_path.encode(), export.encode(), size, flags)
        if handle == ffi.NULL:
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        self.handle: Any = handle
        self.size, self.flags = size[0], flags[0]

    def read(self, offset: int, lengths: Sequence[int]) -> tuple[int, bytes]:
        buffers = [ffi.new("char[]", max(n, 1)) for n in lengths]
        iov = _iovecs(buffers, lengths)
        result = lib.vmrun_nbd_read(self.handle, iov, len(lengths), offset)
        return result, b"".join(ffi.buffer(b, n)[:] for b, n in zip(buffers, lengths, strict=True))

    def write(self, offset: int, pieces: Sequence[bytes], fua: bool = False) -> int:
        buffers = [ffi.from_buffer(p) for p in pieces]
        iov = _iovecs(buffers, [len(p) for p in pieces])
        return lib.vmrun_nbd_write(self.handle, iov, len(pieces), offset, int(fua))

    def flush(self) -> int:
        return lib.vmrun_nbd_flush(self.handle)

    def trim(self, offset: int, length: int) -> int:
        return lib.vmrun_nbd_trim(self.handle, offset, length)

    def write_zeroes(self, offset: int, length: int, may_trim: bool) -> int:
        return lib.vmrun_nbd_write_zeroes(self.handle, offset, length, int(may_trim))

    def block_sizes(self) -> tuple[int, int, int]:
        sizes = ffi.new("uint32_t[3]")
        lib.vmrun_nbd_block_sizes(self.handle, sizes, sizes + 1, sizes + 2)
        return sizes[0], sizes[1], sizes[2]

    def close(self) -> None:
        handle, self.handle = self.handle, ffi.NULL
        lib.vmrun_nbd_close(handle)


def _iovecs(buffers: Sequence[Any], lengths: Sequence[int]) -> Any:
    iov = ffi.new("struct iovec[]", max(len(buffers), 1))
    for i, (buffer, length) in enumerate(zip(buffers, lengths, strict=True)):
        iov[i].iov_base = buffer
        iov[i].iov_len = length
    return iov


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """call(), in a thread: the test fails, instead of hanging, if it does not return."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the test's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"no answer within {seconds} s"
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


def split(data: bytes, rng: random.Random, parts: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), parts - 1)) if parts > 1 else []
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# --- against qemu-storage-daemon ----------------------------------------------------------


@pytest.fixture
def daemon_ready() -> None:
    require_daemon()


@pytest.mark.parametrize("cluster_size", [65536, 4096])
def test_data_written_is_read_back_and_lands_in_the_image(
    tmp_path: Path, daemon_ready: None, cluster_size: int
) -> None:
    size = 80 * MiB
    image = make_qcow2(tmp_path / "disk.qcow2", size, cluster_size)
    expected = bytearray(size)
    rng = random.Random(cluster_size)
    with DiskExport(str(image), disk="block[0]", read_only=False, direct_io=False) as export:
        client = Client(export.socket_path, export.export_name)
        assert client.size == size
        wanted = HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES
        assert client.flags & wanted == wanted and not client.flags & READ_ONLY
        # Scattered writes: unaligned offsets and lengths, one to five iovecs, some FUA.
        for i in range(40):
            length = rng.randrange(1, 300_000)
            offset = rng.randrange(0, size - length)
            data = rng.randbytes(length)
            parts = split(data, rng, min(length, rng.randint(1, 5)))
            assert client.write(offset, parts, fua=i % 3 == 0) == 0
            expected[offset : offset + length] = data
        # Longer than 32 MiB: split into several requests, across three iovecs.
        big = rng.randbytes(33 * MiB + 12345)
        offset = 7 * MiB + 3
        assert client.write(offset, [big[:1000], big[1000 : 20 * MiB], big[20 * MiB :]]) == 0
        expected[offset : offset + len(big)] = big
        assert client.flush() == 0
        # TRIM of whole clusters: with no backing file they read back zero, and are freed.
        trimmed = (10 * MiB, 4 * MiB)
        assert client.trim(*trimmed) == 0
        expected[10 * MiB : 14 * MiB] = bytes(4 * MiB)
        # WRITE_ZEROES, unaligned, with and without leave to punch holes.
        for (start, length), may_trim in (((20 * MiB + 77, 3 * MiB + 5), True),
                                          ((30 * MiB - 9, 999), False)):  # fmt: skip
            assert client.write_zeroes(start, length, may_trim) == 0
            expected[start : start + length] = bytes(length)
        # Read back in pieces: a read longer than 32 MiB over uneven iovecs, then the rest.
        result, head = client.read(0, [5, 40 * MiB - 5 - 3, 3])
        assert result == 0 and head == expected[: 40 * MiB]
        result, tail = client.read(40 * MiB, [size - 40 * MiB])
        assert result == 0 and tail == expected[40 * MiB :]
        client.close()
    check_clean(image)
    assert raw_contents(image) == expected
    assert not allocated(image, *trimmed)


def test_two_connections_at_once_see_each_others_writes(tmp_path: Path, daemon_ready: None) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", 16 * MiB)
    with DiskExport(str(image), disk="block[0]", read_only=False, direct_io=True) as export:
        first = Client(export.socket_path)
        second = Client(export.socket_path)
        assert first.flags & lib.VMRUN_NBD_FLAG_CAN_MULTI_CONN
        data = {c: bytes([n + 1]) * (2 * MiB + 512) for n, c in enumerate((first, second))}
        # Both at once, each from its own thread, on disjoint ranges.
        results: dict[int, int] = {}

        def write(n: int, client: Client) -> None:
            results[n] = client.write(n * 4 * MiB, [data[client]])

        threads = [threading.Thread(target=write, args=(n, c)) for n, c in enumerate(data)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PROMPT_S)
        assert results == {0: 0, 1: 0}
        assert second.read(0, [len(data[first])]) == (0, data[first])
        assert first.read(4 * MiB, [len(data[second])]) == (0, data[second])
        first.close()
        second.close()
    check_clean(image)
    contents = raw_contents(image)
    assert contents[: len(data[first])] == data[first]
    assert contents[4 * MiB : 4 * MiB + len(data[second])] == data[second]


def test_a_read_only_export_refuses_writes(tmp_path: Path, daemon_ready: None) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", 4 * MiB)
    with DiskExport(str(image), disk="block[0]", read_only=True, direct_io=False) as export:
        client = Client(export.socket_path)
        assert client.flags & READ_ONLY
        assert client.write(0, [b"x" * 512]) == -errno.EPERM
        assert client.trim(0, 65536) == -errno.EPERM
        assert client.write_zeroes(0, 65536, may_trim=True) == -errno.EPERM
        assert client.read(0, [512]) == (0, bytes(512))
        assert client.flush() == 0
        client.close()
    check_clean(image)
    assert raw_contents(image) == bytes(4 * MiB)


def test_a_range_past_the_end_fails_and_the_connection_goes_on(
    tmp_path: Path, daemon_ready: None
) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", 1 * MiB)
    with DiskExport(str(image), disk="block[0]", read_only=False, direct_io=False) as export:
        client = Client(export.socket_path)
        assert client.read(MiB - 10, [11])[0] == -errno.EINVAL
        assert client.read(2**64 - 1, [1])[0] == -errno.EINVAL
        assert client.write(MiB, [b"x"]) == -errno.ENOSPC
        assert client.trim(0, MiB + 1) == -errno.EINVAL
        assert client.write_zeroes(MiB - 1, 2, may_trim=False) == -errno.ENOSPC
        assert client.write(MiB - 3, [b"end"]) == 0
        assert client.read(MiB - 3, [3]) == (0, b"end")
        assert client.read(0, []) == (0, b"")  # nothing asked, nothing sent
        client.close()


def test_an_export_name_the_daemon_does_not_have_is_enoent(
    tmp_path: Path, daemon_ready: None
) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", 1 * MiB)
    with DiskExport(str(image), disk="block[0]", read_only=False, direct_io=False) as export:
        with pytest.raises(OSError) as caught:
            Client(export.socket_path, "other")
        assert caught.value.errno == errno.ENOENT
        assert export.daemon_says() == ""  # the handshake was ended properly (NBD_OPT_ABORT)


def test_the_daemon_killed_under_a_connection_gives_eio_at_once(
    tmp_path: Path, daemon_ready: None
) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", 128 * MiB)
    with DiskExport(str(image), disk="block[0]", read_only=False, direct_io=False) as export:
        assert export.pid is not None
        idle = Client(export.socket_path)
        busy = Client(export.socket_path)
        # Stopped, the daemon takes no more of a 64 MiB write than the socket holds; killed,
        # it leaves the writer mid-request.
        os.kill(export.pid, signal.SIGSTOP)
        big = bytes(64 * MiB)
        writer: list[int] = []
        thread = threading.Thread(target=lambda: writer.append(busy.write(0, [big])), daemon=True)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting on the stopped daemon
        os.kill(export.pid, signal.SIGKILL)
        thread.join(PROMPT_S)
        assert writer == [-errno.EIO]
        assert within(PROMPT_S, lambda: idle.read(0, [4096]))[0] == -errno.EIO
        # Broken now: every call fails at once, locally.
        assert within(PROMPT_S, lambda: idle.read(0, [4096]))[0] == -errno.EIO
        assert within(PROMPT_S, lambda: idle.write(0, [b"x"])) == -errno.EIO
        assert within(PROMPT_S, idle.flush) == -errno.EIO
        assert within(PROMPT_S, lambda: busy.trim(0, 4096)) == -errno.EIO
        within(PROMPT_S, idle.close)
        within(PROMPT_S, busy.close)
        with pytest.raises(OSError) as caught:
            within(PROMPT_S, lambda: Client(export.socket_path))
        assert caught.value.errno == errno.ECONNREFUSED


# --- connecting to what is not a server ---------------------------------------------------


def test_a_socket_with_nothing_listening_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(path))  # bound, never listening
    with pytest.raises(OSError) as refused:
        Client(str(path))
    assert refused.value.errno == errno.ECONNREFUSED
    bound.close()
    with pytest.raises(OSError) as missing:
        Client(str(tmp_path / "none.sock"))
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(OSError) as too_long:
        Client("/" + "x" * 200)
    assert too_long.value.errno == errno.ENAMETOOLONG


@pytest.mark.parametrize(
    ("says", "expected"), [(b"", errno.EIO), (b"HTTP/1.1 400 Bad Request\r\n\r\n", errno.EPROTO)]
)
def test_a_server_that_does_not_speak_nbd_fails_the_connect(
    tmp_path: Path, says: bytes, expected: int
) -> None:
    path = tmp_path / "other.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        conn.sendall(says)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(OSError) as caught:
        within(PROMPT_S, lambda: Client(str(path)))
    assert caught.value.errno == expected
    listener.close()


# --- against the fake server --------------------------------------------------------------


def fake(tmp_path: Path, **settings: Any) -> FakeNbdServer:
    return FakeNbdServer(tmp_path / "fake.sock", **settings)


def test_requests_are_split_at_the_servers_maximum(tmp_path: Path) -> None:
    server = fake(tmp_path, size=GiB, flags=HAS_FLAGS | SEND_FLUSH, max_block=65536, fill=7)
    client = Client(str(server.path))
    assert client.block_sizes() == (1, 4096, 65536)
    assert client.write(100, [b"a" * 70000, b"b" * 80000]) == 0
    assert client.read(5, [150000]) == (0, bytes([7]) * 150000)
    client.close()
    server.wait_ended()
    writes = [r for r in server.requests if r[0] == WRITE]
    assert writes == [(WRITE, 0, 100, 65536), (WRITE, 0, 65636, 65536), (WRITE, 0, 131172, 18928)]
    reads = [r for r in server.requests if r[0] == READ]
    assert [r[3] for r in reads] == [65536, 65536, 18928]
    assert server.requests[-1][0] == DISC
    server.close()


def test_the_payload_maximum_is_32_mib_whatever_the_server_allows(tmp_path: Path) -> None:
    server = fake(tmp_path, size=GiB, flags=HAS_FLAGS, max_block=2**31)
    client = Client(str(server.path))
    assert client.block_sizes()[2] == 32 * MiB
    assert client.write(0, [bytes(32 * MiB + 1)]) == 0
    client.close()
    server.wait_ended()
    assert [r[3] for r in server.requests if r[0] == WRITE] == [32 * MiB, 1]
    server.close()


def test_trim_and_zeroes_past_4_gib_are_split_on_mib_boundaries(tmp_path: Path) -> None:
    flags = HAS_FLAGS | SEND_TRIM | SEND_WRITE_ZEROES
    server = fake(tmp_path, size=64 * GiB, flags=flags)
    client = Client(str(server.path))
    assert client.trim(MiB, 9 * GiB) == 0
    assert client.write_zeroes(0, 5 * GiB, may_trim=False) == 0
    assert client.write_zeroes(0, 4096, may_trim=True) == 0
    client.close()
    server.wait_ended()
    piece = 4 * GiB - MiB
    trims = [r for r in server.requests if r[0] == TRIM]
    assert trims == [
        (TRIM, 0, MiB, piece),
        (TRIM, 0, MiB + piece, piece),
        (TRIM, 0, MiB + 2 * piece, 9 * GiB - 2 * piece),
    ]
    zeroes = [r for r in server.requests if r[0] == WRITE_ZEROES]
    assert zeroes == [
        (WRITE_ZEROES, FLAG_NO_HOLE, 0, piece),
        (WRITE_ZEROES, FLAG_NO_HOLE, piece, 5 * GiB - piece),
        (WRITE_ZEROES, 0, 0, 4096),
    ]
    server.close()


def test_what_the_export_lacks_is_answered_locally(tmp_path: Path) -> None:
    server = fake(tmp_path, size=GiB, flags=HAS_FLAGS)  # no FLUSH, FUA, TRIM, WRITE_ZEROES
    client = Client(str(server.path))
    assert client.flush() == 0  # nothing to flush: no request
    assert client.trim(0, 4096) == -errno.EOPNOTSUPP
    assert client.write_zeroes(0, 4096, may_trim=True) == -errno.EOPNOTSUPP
    assert client.write(0, [b"x"], fua=True) == 0  # no FUA and no FLUSH: a plain write
    client.close()
    server.wait_ended()
    assert [r[:2] for r in server.requests] == [(WRITE, 0), (DISC, 0)]
    server.close()


def test_fua_is_native_or_a_write_then_a_flush(tmp_path: Path) -> None:
    native = fake(tmp_path, size=GiB, flags=HAS_FLAGS | SEND_FLUSH | SEND_FUA)
    client = Client(str(native.path))
    assert client.write(0, [b"x"], fua=True) == 0
    client.close()
    native.wait_ended()
    assert [r[:2] for r in native.requests] == [(WRITE, FLAG_FUA), (DISC, 0)]
    native.close()
    (tmp_path / "fake.sock").unlink()
    emulated = fake(tmp_path, size=GiB, flags=HAS_FLAGS | SEND_FLUSH)
    client = Client(str(emulated.path))
    assert client.write(0, [b"x"], fua=True) == 0
    client.close()
    emulated.wait_ended()
    assert [r[:2] for r in emulated.requests] == [(WRITE, 0), (FLUSH, 0), (DISC, 0)]
    emulated.close()


@pytest.mark.parametrize(
    ("nbd_error", "expected"),
    [
        (1, errno.EPERM),
        (5, errno.EIO),
        (12, errno.ENOMEM),
        (22, errno.EINVAL),
        (28, errno.ENOSPC),
        (75, errno.EOVERFLOW),
        (95, errno.EOPNOTSUPP),
        (108, errno.ESHUTDOWN),
        (9999, errno.EIO),
    ],
)
def test_server_errors_are_mapped_and_the_connection_goes_on(
    tmp_path: Path, nbd_error: int, expected: int
) -> None:
    server = fake(tmp_path, size=GiB, flags=HAS_FLAGS, errors={READ: nbd_error})
    client = Client(str(server.path))
    assert client.read(0, [4096])[0] == -expected
    assert client.write(0, [b"still here"]) == 0
    client.close()
    server.close()


def test_a_reply_with_the_wrong_cookie_breaks_the_connection(tmp_path: Path) -> None:
    server = fake(tmp_path, size=GiB, flags=HAS_FLAGS | SEND_FLUSH, bad_cookie=True)
    client = Client(str(server.path))
    assert within(PROMPT_S, lambda: client.read(0, [512]))[0] == -errno.EIO
    assert within(PROMPT_S, client.flush) == -errno.EIO
    client.close()
    server.wait_ended()
    assert [r[0] for r in server.requests] == [READ]  # nothing sent after the break
    server.close()


def test_an_unknown_export_ends_the_handshake_with_abort(tmp_path: Path) -> None:
    server = fake(tmp_path, size=GiB, flags=HAS_FLAGS)
    with pytest.raises(OSError) as caught:
        Client(str(server.path), "missing")
    assert caught.value.errno == errno.ENOENT
    server.wait_ended()
    assert server.options[-1] == 2  # NBD_OPT_ABORT
    server.close()
