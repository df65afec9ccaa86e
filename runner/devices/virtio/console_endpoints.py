"""A console plan (console_plan.py) made real: each endpoint opened, terminals in raw mode
with their window size followed, and the device backend built on the fds.

Every fd opened here, and the terminal modes, are undone by the machine's exit stack; the
backend makes its own private, non-blocking copies of the fds (console.py), so nothing here
changes a file description that vmrun shares with its parent (a shell's terminal or pipe).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import ExitStack

from runner import terminal
from runner.devices.legacy.serial_output import open_output_file
from runner.devices.virtio.console import ConsolePort, VirtioConsole
from runner.devices.virtio.console_plan import ConsolePlan, Endpoint
from runner.emulated import output_ports
from runner.errors import VmrunError

STDIO_FDS = {"stdin": 0, "stdout": 1, "stderr": 2}


class ConsoleEndpointError(VmrunError):
    """An endpoint of a console cannot be opened; the message says which and why."""


def build_console(plan: ConsolePlan, stack: ExitStack) -> VirtioConsole:
    # One fd per file and direction; one per terminal, read and written.
    opened: dict[tuple[str, str], int] = {}

    def fd_of(endpoint: Endpoint | None, direction: str) -> int | None:
        if endpoint is None:
            return None
        key = (endpoint.name, "" if endpoint.terminal else direction)
        if key not in opened:
            opened[key] = _open(endpoint, direction, stack)
        return opened[key]

    ports = []
    for port in plan.ports:
        size = None
        if port.size_from is not None:
            size = terminal.window_size(fd_of(port.size_from, "size"))
        if port.raw is not None:
            stack.enter_context(terminal.raw_mode(fd_of(port.raw, "size")))
        ports.append(
            ConsolePort(
                name=port.name,
                input_fd=fd_of(port.input, "in"),
                output_fd=fd_of(port.output, "out"),
                console=port.console,
                size=size,
            )
        )
    console = VirtioConsole(ports, multiport=plan.multiport)
    stack.callback(console.close)
    for index, port in enumerate(plan.ports):
        # SIGWINCH tells of vmrun's controlling terminal only: another terminal's port keeps
        # the size it had at the start.
        if port.size_from is not None and port.size_from.name in STDIO_FDS:
            stack.enter_context(terminal.watch_window_size(_resizer(console, index)))
    return console


def _resizer(console: VirtioConsole, index: int) -> Callable[[int, int], None]:
    def resize(rows: int, cols: int) -> None:
        console.resize(index, rows, cols)

    return resize


def _open(endpoint: Endpoint, direction: str, stack: ExitStack) -> int:
    """vmrun's own stdio as it is (flushed first); a path opened here, and closed by the
    stack. An output file inside the emulated host is the port that the vmrun outside
    writes to it from (runner/emulated/output_ports.py)."""
    if endpoint.name in STDIO_FDS:
        fd = STDIO_FDS[endpoint.name]
        if fd == 1:
            sys.stdout.flush()
        try:
            os.fstat(fd)
        except OSError as exc:
            raise ConsoleEndpointError(
                f"{endpoint.key}: vmrun's {endpoint.name} is closed"
            ) from exc
        return fd
    try:
        if endpoint.terminal:
            fd = os.open(endpoint.name, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        elif direction == "in":
            # Non-blocking: a FIFO without a writer yet must not hold the boot up.
            fd = os.open(endpoint.name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            port = output_ports.port_device(endpoint.key)
            if port is not None:
                fd = os.open(port, os.O_WRONLY | os.O_CLOEXEC)
            else:
                stream = open_output_file(endpoint.name, endpoint.key)
                fd = os.dup(stream.fileno())
                stream.close()
    except OSError as exc:
        raise ConsoleEndpointError(
            f"{endpoint.key}: cannot open {endpoint.name}: {exc.strerror}"
        ) from exc
    stack.callback(os.close, fd)
    return fd
