"""The host side of a serial console's output: a bounded buffer and a writer thread.

A vCPU thread that writes the UART's THR must never wait for the host. If it wrote to
vmrun's stdout itself, a reader that stopped reading (a full pipe) would block it inside the
UART's lock, and then neither SIGINT nor SIGTERM, which stop the VM by kicking its vCPU
threads, could end vmrun. So the UART appends to a buffer of at most `bound` bytes, and a
thread of its own writes the buffer out as fast as the reader takes it, in the order written.
The writer collects bytes for up to BATCH_S (or BATCH_BYTES) before it writes: one
wake-up and one write per batch, not per byte. A reader that falls more than `bound` behind
loses what does not fit, and a reader that has gone (EPIPE, or any write error) loses the
rest; each is said once on stderr. At the end, `close` waits until everything buffered is
written, in short interruptible waits; a VM stopped by SIGINT or SIGTERM `abandon`s what is
left instead of waiting for a reader that may never read again. The writer thread is a
daemon and writes with os.write, so it never holds the process's exit up.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

from runner.errors import VmrunError

BOUND = 1 << 20  # what a stalled reader may leave buffered
DRAIN_POLL_S = 0.2  # the wait in `close` wakes this often, so signals are handled
BATCH_S = 0.01  # the longest a byte waits to be written: a prompt shows without a newline
BATCH_BYTES = 4096


def _to_dev_null(fd: int) -> None:
    """An fd that failed (its reader is gone) writes to /dev/null from now on: what its stream
    still buffers would otherwise fail again, noisily, when it is flushed at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.dup2(devnull, fd, inheritable=False)
    except OSError:
        pass
    finally:
        os.close(devnull)


class OutputFileError(VmrunError):
    """A console output file that vmrun will not write; the message names its key."""


def _say(message: str) -> None:
    print(f"vmrun: {message}", file=sys.stderr, flush=True)


class SerialOutput:
    """Writes what the guest sends to `stream`, named `name` in messages, never blocking
    `write`; `say` reports lost output (once per kind)."""

    def __init__(
        self,
        stream: BinaryIO,
        name: str,
        bound: int = BOUND,
        say: Callable[[str], None] = _say,
    ) -> None:
        self._stream = stream
        # Written with os.write where the stream has an fd: a thread stuck in a buffered
        # stream's write would hold its lock, and flushing it at exit (sys.stdout's) would
        # then wait for that thread forever.
        try:
            stream.flush()
            self._fd: int | None = stream.fileno()
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            self._fd = None
        self._name = name
        self._bound = bound
        self._say = say
        self._pending = bytearray()
        self._writing = False
        self._closing = False
        self._overflowed = False
        self._failed = False
        self._abandoned = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, name=f"output {name}", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        """Buffer `data` (what fits) for the writer thread; never waits for the reader."""
        with self._changed:
            if self._failed or self._closing:
                return
            room = self._bound - len(self._pending)
            if len(data) > room and not self._overflowed:
                self._overflowed = True
                self._say(
                    f"{self._name}: the reader is {self._bound} bytes behind; "
                    "the guest's output beyond that is lost until it catches up"
                )
            if room > 0:
                was_empty = not self._pending
                self._pending += data[:room]
                # One wake-up per batch, not per byte (every byte is a VM exit already): the
                # writer collects for up to BATCH_S, or until BATCH_BYTES are waiting.
                if was_empty or len(self._pending) >= BATCH_BYTES:
                    self._changed.notify_all()

    def flush(self) -> None:
        """Nothing to do: the writer thread writes as soon as there is something."""

    def close(self) -> None:
        """Wait until all that was buffered is written (or cannot be, or was abandoned), then
        let the thread end."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            while (self._pending or self._writing) and not (self._failed or self._abandoned):
                self._changed.wait(DRAIN_POLL_S)

    def abandon(self) -> None:
        """Drop what is buffered and take nothing more: `close` then returns at once, even
        while the writer thread is stuck in a write to a reader that stopped reading."""
        with self._changed:
            self._abandoned = self._closing = True
            self._pending.clear()
            self._changed.notify_all()

    def _write_out(self, chunk: bytes) -> None:
        if self._fd is None:
            self._stream.write(chunk)
            self._stream.flush()
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]

    def _pump(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closing:
                    self._changed.wait()
                if not self._pending:
                    return
                if not self._closing and len(self._pending) < BATCH_BYTES:
                    self._changed.wait(BATCH_S)
                chunk = bytes(self._pending)
                self._pending.clear()
                self._writing = True
            try:
                self._write_out(chunk)
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                with self._changed:
                    self._failed, self._writing = True, False
                    self._pending.clear()
                    self._changed.notify_all()
                # Only for a reader that went away: after `abandon` the fd may be closed, its
                # number reused.
                if self._fd is not None and isinstance(exc, BrokenPipeError):
                    _to_dev_null(self._fd)
                self._say(
                    f"{self._name}: cannot write the guest's output ({exc}); the rest is lost"
                )
                return
            with self._changed:
                self._writing = False
                self._changed.notify_all()


# A console file is appended to, and only a regular file or a terminal: O_NOFOLLOW, so that a
# symbolic link planted where the file is (a shared directory) does not redirect the writes;
# O_NONBLOCK only while it is opened, so that a FIFO there is refused, not waited on.
OUTPUT_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def open_output_file(path: str, key: str) -> BinaryIO:
    try:
        fd = os.open(path, OUTPUT_FLAGS | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputFileError(
                f"{key}: {path} is a symbolic link; name the file it points to"
            ) from exc
        if exc.errno == errno.ENXIO:  # a FIFO without a reader
            raise OutputFileError(f"{key}: {path} is a FIFO, not a file or terminal") from exc
        raise OutputFileError(f"{key}: {path}: {exc.strerror}") from exc
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))):
        os.close(fd)
        raise OutputFileError(f"{key}: {path} is not a regular file or a terminal")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")
