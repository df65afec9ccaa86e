"""Which ports each virtio console has and where each port's bytes go, libkrun's way.

Pure data, decided once per run from the VM file and from which of vmrun's stdin, stdout
and stderr are terminals, so that the devices the builder attaches and the init's config
(which ports it puts on the workload's fds) always agree.

- The implicit console (hvc0): with `console_output`, one console port writing to that file
  (no input). Otherwise port 0 is the console: its input is stdin when stdin is a terminal,
  its output stdout when stdout is a terminal, else stderr (the kernel's and the init's
  messages never mix into the workload's stdout), its size that of the first of stdin,
  stdout, stderr that is a terminal. Each of stdin, stdout, stderr that is not a terminal
  gets a port of its own, named `krun-stdin`, `krun-stdout`, `krun-stderr` as in libkrun,
  which the init puts on the workload's fd 0, 1 or 2; then the device is multiport.
- An `auto` console: port 0 the console (`input`, `output`), and a `krun-stderr` port
  (`err`); the init gives the workload's stderr to the first `krun-stderr` port there is.
- A `ports` console: the ports as listed, none of them a console (the guest's
  /dev/vportNpM, named); a `tty` port reads and writes its terminal (`stdin`: vmrun's own,
  or stdin and stdout when stdin is not a terminal).

Endpoints are the file's words: `stdin`, `stdout`, `stderr`, `null` (None here) or a host
path; `key` says where the file wrote it, for messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from runner.config.devices import AutoVirtioConsole, ExplicitVirtioConsole, TtyPort
from runner.config.model import VmResources

STDIO_PORT_NAMES = ("krun-stdin", "krun-stdout", "krun-stderr")
STDIO_NAMES = ("stdin", "stdout", "stderr")


@attrs.frozen
class Endpoint:
    """A port's input or output: `stdin`, `stdout`, `stderr` or a host path."""

    name: str
    key: str  # where the VM file says it ("virtio_consoles[1].output"), or what implies it
    terminal: bool = False  # a terminal device (a `tty` port's path): opened read-write


@attrs.frozen
class PortPlan:
    name: str  # "" for an unnamed port
    input: Endpoint | None
    output: Endpoint | None
    console: bool  # a console port: the guest's hvcN
    size_from: Endpoint | None = None  # the terminal whose window size the port takes
    raw: Endpoint | None = None  # the terminal to put in raw mode while the VM runs


@attrs.frozen
class ConsolePlan:
    ports: tuple[PortPlan, ...]
    multiport: bool


@attrs.frozen
class InitStdio:
    """What the init's config says about the workload's stdio."""

    console: str | None  # the workload's terminal, e.g. /dev/hvc0 (None: /dev/console)
    stdio_ports: tuple[tuple[int, str], ...]  # (fd, port name)
    # Every console's ports, and those named: the init waits for them all before the
    # workload (the guest's driver adds them one by one as the device's messages come).
    virtio_ports: tuple[int, int] = (0, 0)


def _endpoint(value: str | None, key: str) -> Endpoint | None:
    return None if value in (None, "null") else Endpoint(value, key)


def implicit_console(resources: VmResources, terminals: frozenset[int]) -> ConsolePlan:
    if resources.console_output:
        output = Endpoint(resources.console_output, "console_output")
        return ConsolePlan((PortPlan("", None, output, console=True),), multiport=False)
    stdio = [Endpoint(name, f"vmrun's {name}") for name in STDIO_NAMES]
    sized = next((stdio[fd] for fd in (0, 1, 2) if fd in terminals), None)
    console = PortPlan(
        "",
        stdio[0] if 0 in terminals else None,
        stdio[1] if 1 in terminals else stdio[2],
        console=True,
        size_from=sized,
        raw=stdio[0] if 0 in terminals else None,
    )
    named = [
        PortPlan(
            STDIO_PORT_NAMES[fd],
            stdio[fd] if fd == 0 else None,
            stdio[fd] if fd else None,
            console=False,
        )
        for fd in (0, 1, 2)
        if fd not in terminals
    ]
    return ConsolePlan((console, *named), multiport=bool(named))


def auto_console(console: AutoVirtioConsole, key: str, terminals: frozenset[int]) -> ConsolePlan:
    input_ = _endpoint(console.input, f"{key}.input")
    on_terminal = input_ is not None and input_.name == "stdin" and 0 in terminals
    port0 = PortPlan(
        "",
        input_,
        _endpoint(console.output, f"{key}.output"),
        console=True,
        size_from=input_ if on_terminal else None,
        raw=input_ if on_terminal else None,
    )
    err = PortPlan(STDIO_PORT_NAMES[2], None, _endpoint(console.err, f"{key}.err"), console=False)
    return ConsolePlan((port0, err), multiport=True)


def listed_console(
    console: ExplicitVirtioConsole, key: str, terminals: frozenset[int]
) -> ConsolePlan:
    ports = []
    for index, port in enumerate(console.ports):
        where = f"{key}.ports[{index}]"
        if isinstance(port, TtyPort):
            ports.append(_tty_port(port, f"{where}.tty", terminals))
        else:
            ports.append(
                PortPlan(
                    port.name,
                    _endpoint(port.input, f"{where}.input"),
                    _endpoint(port.output, f"{where}.output"),
                    console=False,
                )
            )
    return ConsolePlan(tuple(ports), multiport=True)


def _tty_port(port: TtyPort, key: str, terminals: frozenset[int]) -> PortPlan:
    if port.tty == "null":  # a port with nothing behind it, as an endpoint `null` is
        return PortPlan(port.name, None, None, console=False)
    if port.tty != "stdin":
        device = Endpoint(port.tty, key, terminal=True)
        return PortPlan(port.name, device, device, console=False, size_from=device, raw=device)
    stdin = Endpoint("stdin", key)
    if 0 in terminals:  # vmrun's terminal, both ways (a terminal is open for reading and writing)
        return PortPlan(port.name, stdin, stdin, console=False, size_from=stdin, raw=stdin)
    return PortPlan(port.name, stdin, Endpoint("stdout", key), console=False)


def console_plans(resources: VmResources, terminals: frozenset[int]) -> list[ConsolePlan]:
    """One plan per virtio console, in slot order (runner/config/slots.py: the implicit one
    first)."""
    plans = [] if resources.disable_implicit_console else [implicit_console(resources, terminals)]
    for index, console in enumerate(resources.virtio_consoles):
        key = f"virtio_consoles[{index}]"
        if isinstance(console, AutoVirtioConsole):
            plans.append(auto_console(console, key, terminals))
        else:
            plans.append(listed_console(console, key, terminals))
    return plans


def init_stdio(resources: VmResources, plans: Sequence[ConsolePlan]) -> InitStdio:
    """The workload's terminal is the implicit console's (hvc0) when there is one; each of
    its fds with a `krun-*` port of the same name gets the first such port."""
    console = None if resources.disable_implicit_console else "/dev/hvc0"
    names = {port.name for plan in plans for port in plan.ports}
    ports = tuple((fd, name) for fd, name in enumerate(STDIO_PORT_NAMES) if name in names)
    every = [port for plan in plans for port in plan.ports]
    return InitStdio(console, ports, (len(every), sum(1 for port in every if port.name)))


def reads_stdin(plans: Sequence[ConsolePlan]) -> bool:
    return any(
        port.input is not None and port.input.name == "stdin"
        for plan in plans
        for port in plan.ports
    )
