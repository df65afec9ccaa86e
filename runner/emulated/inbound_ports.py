"""Into the emulated host: vmrun's stdin for the command, and its terminal's window size.

QEMU's `file` chardev (the outbound ports', host.py) never tells the guest that its input
ended; a `socket` chardev does: when the connection ends, QEMU closes the port
(VIRTIO_CONSOLE_PORT_OPEN 0), and Linux's reads there return 0 once the data is consumed.
So vmrun listens on a unix socket in the scratch directory (mkdtemp's 0700: this user's
only) for each inbound port, QEMU connects to it as it starts, and vmrun writes.

At the end of stdin vmrun shuts down only its sending side: QEMU reads what is still in the
socket as the guest takes it, then sees the end. A close would be a hang-up, on which QEMU
drops the connection with the bytes it has not read yet. The sockets close after QEMU ends.

With `stdin="raw"` and a terminal there, the terminal is the command's console (a VM's,
through the vmrun inside): raw mode for the run, every key (^C too) passed on as a byte,
and the window's size sent as "ROWS COLS" lines on the `winsize` port whenever one of
vmrun's stdio is a terminal (runner/terminal.py reads them inside).
"""

from __future__ import annotations

import os
import select
import socket
import stat
import subprocess
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from types import TracebackType
from typing import Literal

import attrs

from runner import terminal
from runner.errors import VmrunError

# The command's stdin: /dev/null; vmrun's stdin to its end; or that, and a terminal there
# in raw mode (a terminal in "pass" stays as it is: lines, echo and ^C are its own).
StdinMode = Literal["null", "pass", "raw"]
INBOUND_PORTS = ("stdin", "winsize")
CONNECT_WAIT_S = 60.0  # QEMU connects as it starts, before the guest boots
BACKGROUND_POLL_S = 0.2  # how often a job in the background checks whether it is foreground
SOCKET_PATH_MAX = 107  # sun_path's 108 bytes, with the NUL


class InboundPortError(VmrunError):
    """An inbound port's socket cannot be made (the directory's path is too long)."""


@attrs.frozen
class StdioFacts:
    """What the command is told about vmrun's stdin, stdout and stderr."""

    terminals: frozenset[int]  # stdin among them only when it passes keys raw
    size: tuple[int, int] | None  # that of the first terminal among them
    raw: bool

    def env(self) -> dict[str, str]:
        rows_cols = f"{self.size[0]} {self.size[1]}" if self.size else ""
        listed = " ".join(str(fd) for fd in sorted(self.terminals))
        return {terminal.TERMINALS_ENV: listed, terminal.SIZE_ENV: rows_cols}

    @property
    def size_fd(self) -> int | None:
        return min(self.terminals) if self.terminals else None


def stdio_facts(stdin: StdinMode) -> StdioFacts:
    found = terminal.stdio_terminals()
    raw = stdin == "raw" and 0 in found
    # A cooked terminal reaches the command as lines: to a vmrun in there, not a console's.
    terminals = found if raw else found - {0}
    size = terminal.window_size(min(terminals)) if terminals else None
    return StdioFacts(terminals, size, raw)


def _reads_nothing(fd: int) -> bool:
    """`fd` is closed or /dev/null."""
    try:
        st = os.fstat(fd)
    except OSError:
        return True
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


class InboundPorts:
    """The inbound ports' host side, from listening (before QEMU starts) to closing (after
    it ended); the terminal is raw from entry to exit with `stdin="raw"`."""

    def __init__(self, scratch: Path, stdin: StdinMode) -> None:
        if _reads_nothing(0):
            # Nothing to carry: the job gets /dev/null itself, and QEMU no socket port (the
            # boot-test session's host stays as it was before stdin was carried in).
            stdin = "null"
        self.facts = stdio_facts(stdin)
        self._stdin = stdin
        self._scratch = scratch
        self._stack = ExitStack()
        self._listeners: dict[str, socket.socket] = {}
        self._connections: dict[str, socket.socket] = {}
        self._wake = (-1, -1)
        self._pump: threading.Thread | None = None

    @property
    def sockets(self) -> dict[str, Path]:
        """Each port's name and the socket QEMU connects to for it."""
        return {name: self._scratch / f"{name}.sock" for name in self._listeners}

    @property
    def unused(self) -> tuple[str, ...]:
        """The inbound ports this run has no use for."""
        return tuple(name for name in INBOUND_PORTS if name not in self._listeners)

    def __enter__(self) -> InboundPorts:
        with ExitStack() as stack:
            stack.push(self)  # a failure on the way undoes what was done
            if self._stdin != "null":
                self._listen("stdin")
            if self.facts.size_fd is not None:
                self._listen("winsize")
            if self.facts.raw:
                self._stack.enter_context(terminal.raw_mode(0))
            stack.pop_all()
        return self

    def _listen(self, name: str) -> None:
        path = self._scratch / f"{name}.sock"
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise InboundPortError(
                f"{path}: too long for a unix socket; set TMPDIR to a shorter directory"
            )
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listeners[name] = listener
        listener.bind(str(path))
        listener.listen(1)

    def start(self, qemu: subprocess.Popen[bytes]) -> None:
        """Take QEMU's connections, then pass stdin on and follow the window's size."""
        for name, listener in self._listeners.items():
            connection = _accept(listener, qemu)
            if connection is None:
                return  # QEMU ended first: its outcome says why
            self._connections[name] = connection
        if "stdin" in self._connections:
            self._wake = os.pipe2(os.O_CLOEXEC)
            self._pump = threading.Thread(
                target=_pump_stdin,
                args=(self._connections["stdin"], self._wake[0]),
                name="stdin to the emulated host",
                daemon=True,  # blocked writing to a guest that reads nothing: vmrun still ends
            )
            self._pump.start()
        size_fd = self.facts.size_fd
        if "winsize" in self._connections and size_fd is not None:
            if threading.current_thread() is threading.main_thread():  # signal handlers' rule
                self._stack.enter_context(terminal.watch_window_size(self._send_size, size_fd))
            now = terminal.window_size(size_fd)
            if now and now != self.facts.size:  # it changed while QEMU started
                self._send_size(*now)

    def _send_size(self, rows: int, cols: int) -> None:
        # From the SIGWINCH handler: never blocks (a guest that reads no sizes fills the
        # socket; a size lost then is one nobody follows).
        with suppress(OSError):
            self._connections["winsize"].send(f"{rows} {cols}\n".encode(), socket.MSG_DONTWAIT)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._pump is not None:
                os.write(self._wake[1], b"\0")
                self._pump.join(timeout=5)  # QEMU has ended: a write to it fails at once
                if self._pump.is_alive():
                    return  # its fds stay open: closed, their numbers could be another's
            for fd in self._wake:
                if fd >= 0:
                    os.close(fd)
            for connection in (*self._connections.values(), *self._listeners.values()):
                connection.close()
        finally:
            self._stack.close()  # the terminal's own settings and SIGWINCH handler come back


def _accept(listener: socket.socket, qemu: subprocess.Popen[bytes]) -> socket.socket | None:
    deadline = time.monotonic() + CONNECT_WAIT_S
    while qemu.poll() is None and time.monotonic() < deadline:
        if select.select([listener], [], [], 0.1)[0]:
            connection, _ = listener.accept()
            return connection
    return None


def _pump_stdin(connection: socket.socket, wake: int) -> None:
    """vmrun's stdin into the port until its end, then the end. A terminal is read only while
    vmrun is in its foreground: a read from the background would stop vmrun (SIGTTIN)."""
    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(wake, select.POLLIN)
    try:
        while True:
            if wake in dict(poller.poll()):
                return
            if not _foreground(0):
                if select.select([wake], [], [], BACKGROUND_POLL_S)[0]:
                    return
                continue
            try:
                data = os.read(0, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""  # a stdin that fails (closed, a hung-up terminal) has ended
            if not data:
                connection.shutdown(socket.SHUT_WR)
                return
            connection.sendall(data)
    except OSError:
        return  # QEMU went away


def _foreground(fd: int) -> bool:
    if not os.isatty(fd):
        return True
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:  # not vmrun's controlling terminal: no job control applies
        return True
