"""A small NBD server, for what qemu-storage-daemon never does: exports without FLUSH, FUA,
TRIM or WRITE_ZEROES, a small maximum block size, huge exports, errors on demand, and
replies that break the protocol. It serves one connection at a time on a unix socket, in a
thread, holding no data: reads return `fill` bytes, writes are taken and dropped. Every
request is recorded as (command, flags, offset, length).
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_ABORT, OPT_GO = 2, 7
REP_ACK, REP_INFO = 1, 3
REP_ERR_UNKNOWN = 0x80000006
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES = 0, 1, 2, 3, 4, 6
FLAG_FUA, FLAG_NO_HOLE = 1, 2


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


class FakeNbdServer:
    def __init__(
        self,
        path: Path,
        *,
        size: int,
        flags: int,
        max_block: int | None = None,
        export: str = "disk",
        fill: int = 0x5A,
        errors: dict[int, int] | None = None,  # command -> NBD error value to answer with
        bad_cookie: bool = False,
    ) -> None:
        self.path = path
        self.size, self.flags, self.max_block, self.export = size, flags, max_block, export
        self.fill, self.errors, self.bad_cookie = fill, errors or {}, bad_cookie
        self.requests: list[tuple[int, int, int, int]] = []
        self.options: list[int] = []
        self.connections_ended = threading.Semaphore(0)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    if self._handshake(conn):
                        self._transmission(conn)
                except (EOFError, OSError):
                    pass
            self.connections_ended.release()

    def wait_ended(self, timeout: float = 10.0) -> None:
        """Wait for the end of the next connection."""
        assert self.connections_ended.acquire(timeout=timeout), "the connection did not end"

    def _handshake(self, conn: socket.socket) -> bool:
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
        _recv(conn, 4)
        while True:
            magic, option, length = struct.unpack(">QII", _recv(conn, 16))
            assert magic == IHAVEOPT
            data = _recv(conn, length)
            self.options.append(option)
            if option == OPT_ABORT:
                return False
            assert option == OPT_GO
            (name_len,) = struct.unpack(">I", data[:4])
            if data[4 : 4 + name_len].decode() != self.export:
                self._option_reply(conn, option, REP_ERR_UNKNOWN, b"no such export")
                continue
            info = struct.pack(">HQH", INFO_EXPORT, self.size, self.flags)
            self._option_reply(conn, option, REP_INFO, info)
            if self.max_block is not None:
                sizes = struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, self.max_block)
                self._option_reply(conn, option, REP_INFO, sizes)
            self._option_reply(conn, option, REP_ACK, b"")
            return True

    @staticmethod
    def _option_reply(conn: socket.socket, option: int, kind: int, data: bytes) -> None:
        conn.sendall(struct.pack(">QIII", OPTION_REPLY_MAGIC, option, kind, len(data)) + data)

    def _transmission(self, conn: socket.socket) -> None:
        while True:
            magic, flags, kind, cookie, offset, length = struct.unpack(">IHHQQI", _recv(conn, 28))
            assert magic == REQUEST_MAGIC
            self.requests.append((kind, flags, offset, length))
            if kind == DISC:
                return
            if kind == WRITE:
                _recv(conn, length)
            error = self.errors.get(kind, 0)
            if self.bad_cookie:
                cookie ^= 1
            conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, cookie))
            if kind == READ and not error:
                conn.sendall(bytes([self.fill]) * length)
