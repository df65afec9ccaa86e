"""vmrun's terminal: which of its stdio are terminals, their window size, raw mode for a VM
console, and the window's changes.

On a host's KVM these are the terminal's own (isatty, TIOCGWINSZ, SIGWINCH). Inside the
emulated host, vmrun's stdio are virtio-serial ports that carry the outer vmrun's
(runner/emulated/inbound_ports.py), and the outer vmrun tells: which of its fds are terminals
(`VMRUN_STDIO_TERMINALS="0 1 2"`), their size at the start (`VMRUN_TERMINAL_SIZE="24 80"`),
and each new size as a line "ROWS COLS" on the port whose device is in `VMRUN_WINSIZE_PORT`.
It puts its terminal in raw mode itself. A port counts as a terminal only while it is still
a virtio-serial port (a process in between may have given this one a pipe instead), and a
real terminal inside (a pseudo-terminal) is one there as anywhere.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import select
import signal
import stat
import struct
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from runner.errors import VmrunError
from runner.host_kvm import inside_emulated_host

TERMINALS_ENV = "VMRUN_STDIO_TERMINALS"
SIZE_ENV = "VMRUN_TERMINAL_SIZE"
WINSIZE_PORT_ENV = "VMRUN_WINSIZE_PORT"
STDIO = (0, 1, 2)
VIRTIO_PORTS = Path("/sys/class/virtio-ports")
MAX_DIMENSION = 0xFFFF  # struct winsize holds unsigned shorts
MAX_LINE = 64  # a size line is "ROWS COLS"; anything longer is not one

Resized = Callable[[int, int], None]


class TerminalError(VmrunError):
    """vmrun's terminal cannot be set up for a VM's console (it went away, for one)."""


def stdio_terminals() -> frozenset[int]:
    """Which of fds 0, 1, 2 are terminals (inside the emulated host: were, outside)."""
    return frozenset(fd for fd in STDIO if is_terminal(fd))


def is_terminal(fd: int) -> bool:
    return os.isatty(fd) or _relayed(fd)


def window_size(fd: int = 0) -> tuple[int, int] | None:
    """(rows, cols) of the terminal at `fd`; None when it is no terminal or has no size."""
    if os.isatty(fd):
        try:
            packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8))
        except OSError:
            return None
        rows, cols, _, _ = struct.unpack("HHHH", packed)
        return (rows, cols) if rows and cols else None  # 0x0: nobody has set one (a serial line)
    if _relayed(fd):
        return _SIZE_LINES.latest or parse_size(os.environ.get(SIZE_ENV, ""))
    return None


def parse_size(text: str) -> tuple[int, int] | None:
    """ "ROWS COLS" as numbers, or None for anything else."""
    words = text.split()
    if len(words) != 2 or not all(word.isdigit() for word in words):
        return None
    rows, cols = int(words[0]), int(words[1])
    if not (0 < rows <= MAX_DIMENSION and 0 < cols <= MAX_DIMENSION):
        return None
    return rows, cols


def _relayed(fd: int) -> bool:
    """Inside the emulated host: a stdio fd that the outer vmrun says is its terminal, and
    that is still the virtio-serial port that carries it."""
    if not inside_emulated_host() or fd not in STDIO:
        return False
    if str(fd) not in os.environ.get(TERMINALS_ENV, "").split():
        return False
    return _is_virtio_port(fd)


def _is_virtio_port(fd: int) -> bool:
    try:
        status = os.fstat(fd)
    except OSError:
        return False
    if not stat.S_ISCHR(status.st_mode):
        return False
    number = f"{os.major(status.st_rdev)}:{os.minor(status.st_rdev)}"
    for port in VIRTIO_PORTS.glob("*"):
        with contextlib.suppress(OSError):
            if (port / "dev").read_text().strip() == number:
                return True
    return False


# Terminals in raw mode, each with what to give back: atexit's fallback for an exit that
# skips the context managers' own restore (a daemon thread's, say).
_RAW: list[tuple[int, list]] = []
_atexit_registered = False


def raw_attributes(attributes: list) -> list:
    """`attributes` (termios.tcgetattr's list) for a VM's console: every key as a byte, at
    once (no line editing, echo, signal keys, flow control or CR-to-NL: the guest's tty
    does all that), 8-bit; output still post-processed with NL as CR NL, since the guest's
    init turns that off on its console and a "\\n" must still start a line here."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attributes
    iflag &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
        | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
    )  # fmt: skip
    oflag |= termios.OPOST | termios.ONLCR
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cc = list(cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """While inside, the terminal at `fd` is a VM's console (`raw_attributes`); its own
    settings come back on every way out (also atexit). Nothing for a non-terminal (inside
    the emulated host, the outer vmrun sets its terminal raw)."""
    if not os.isatty(fd):
        yield
        return
    try:
        saved = termios.tcgetattr(fd)
    except termios.error as exc:
        raise TerminalError(f"cannot read the terminal's settings: {exc.args[-1]}") from exc
    entry = (fd, saved)
    _RAW.append(entry)
    _register_atexit()
    try:
        try:
            # TCSADRAIN: what was written before finishes under the old settings, and keys
            # typed ahead (while the VM boots) stay for the guest.
            termios.tcsetattr(fd, termios.TCSADRAIN, raw_attributes(saved))
        except termios.error as exc:
            raise TerminalError(f"cannot make the terminal a console: {exc.args[-1]}") from exc
        yield
    finally:
        _RAW[:] = [other for other in _RAW if other is not entry]
        _restore(fd, saved)


def _restore(fd: int, saved: list) -> None:
    # TCSAFLUSH: keys typed for the guest that it never read do not reach the shell.
    with contextlib.suppress(termios.error, OSError):  # the terminal is gone: nothing to restore
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def _restore_all() -> None:
    while _RAW:
        fd, saved = _RAW.pop()
        _restore(fd, saved)


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_restore_all)
        _atexit_registered = True


@contextlib.contextmanager
def watch_window_size(callback: Resized, fd: int = 0) -> Iterator[None]:
    """While inside, `callback(rows, cols)` gets each new size of the terminal at `fd`.

    On a host, from a SIGWINCH handler (so: entered in the main thread, and `callback` runs
    there); the handler that was there before is called too, and comes back at the end.
    Inside the emulated host, for a stdio fd that carries the outer terminal, from a thread
    that reads the sizes that the outer vmrun sends (`callback` runs on that thread)."""
    if not os.isatty(fd) and _relayed(fd):
        _SIZE_LINES.add(callback)
        try:
            yield
        finally:
            _SIZE_LINES.remove(callback)
        return
    previous = signal.getsignal(signal.SIGWINCH)

    def changed(number: int, frame: object) -> None:
        size = window_size(fd)
        if size:
            callback(*size)
        if callable(previous):
            previous(number, frame)

    signal.signal(signal.SIGWINCH, changed)
    try:
        yield
    finally:
        # None: a handler that Python did not install; the default is what SIGWINCH has.
        signal.signal(signal.SIGWINCH, signal.SIG_DFL if previous is None else previous)


class _SizeLines:
    """Reads the sizes that the outer vmrun sends, for every watcher in this process: a
    virtio-serial port opens only once at a time (a second open is EBUSY)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Resized] = []
        self._thread: threading.Thread | None = None
        self._wake = (-1, -1)
        self.latest: tuple[int, int] | None = None

    def add(self, callback: Resized) -> None:
        with self._lock:
            self._callbacks.append(callback)
            if self._thread is None:
                self._start()

    def remove(self, callback: Resized) -> None:
        with self._lock:
            self._callbacks.remove(callback)
            if self._callbacks or self._thread is None:
                return
            thread, self._thread = self._thread, None
            wake_read, wake_write = self._wake
        os.write(wake_write, b"\0")
        thread.join()
        os.close(wake_read)
        os.close(wake_write)

    def _start(self) -> None:
        path = os.environ.get(WINSIZE_PORT_ENV)
        if not path:
            return  # the outer vmrun sends no sizes: the one at the start stays
        try:
            # Non-blocking: a FIFO (as tests use) without a writer must not hold this up.
            port = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # taken by another vmrun in there: this one follows no resize
        self._wake = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(
            target=self._read, args=(port, self._wake[0]), name="window sizes", daemon=True
        )
        self._thread.start()

    def _read(self, port: int, wake: int) -> None:
        poller = select.poll()
        poller.register(port, select.POLLIN)
        poller.register(wake, select.POLLIN)
        pending = b""
        try:
            while True:
                events = dict(poller.poll())
                if wake in events:
                    return
                try:
                    data = os.read(port, 256)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not data:
                    return  # the outer vmrun closed its end
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    if len(line) <= MAX_LINE:
                        self._deliver(parse_size(line.decode(errors="replace")))
                if len(pending) > MAX_LINE:
                    pending = b"x" * (MAX_LINE + 1)  # bounded; its line is none of ours
        finally:
            os.close(port)

    def _deliver(self, size: tuple[int, int] | None) -> None:
        if size is None:
            return
        self.latest = size
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback(*size)


_SIZE_LINES = _SizeLines()
