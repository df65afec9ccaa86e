"""A VM's output files, when it runs in the emulated host: written by the vmrun outside.

The emulated host would otherwise need the directory of every output file shared
read-write (9p shares directories, not files): an output `~/vm.log` would make the whole
home directory writable in there. Instead the vmrun outside opens each file itself (with
the same checks as on a host's KVM) and gives it a virtio-serial port of its own; the vmrun
inside writes the console's output to that port, found by the name that `OUTPUT_PORTS_ENV`
gives for the output's key in the VM file (`serial_consoles[0].output`, `console_output`,
`virtio_consoles[1].ports[0].output`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from runner.config.devices import AutoVirtioConsole, InOutPort
from runner.config.model import VmResources
from runner.errors import VmrunError
from runner.host_kvm import inside_emulated_host

OUTPUT_PORTS_ENV = "VMRUN_OUTPUT_PORTS"
VIRTIO_PORTS = Path("/sys/class/virtio-ports")


class OutputPortError(VmrunError):
    """The vmrun outside gave a console a port that the emulated host does not have."""


def port_name(index: int) -> str:
    return f"out{index}"


def output_files(resources: VmResources) -> list[tuple[str, str]]:
    """Every host file a console of `resources` writes, with its key: serial consoles, the
    implicit console's `console_output`, virtio consoles' outputs and ports."""
    files = [
        (f"serial_consoles[{index}].output", console.output)
        for index, console in enumerate(resources.serial_consoles)
    ]
    if resources.console_output and not resources.disable_implicit_console:
        files.append(("console_output", resources.console_output))
    for index, console in enumerate(resources.virtio_consoles):
        key = f"virtio_consoles[{index}]"
        if isinstance(console, AutoVirtioConsole):
            files += [(f"{key}.output", console.output), (f"{key}.err", console.err)]
            continue
        for number, port in enumerate(console.ports):
            if isinstance(port, InOutPort):
                files.append((f"{key}.ports[{number}].output", port.output))
    return [(key, path) for key, path in files if path not in ("stdout", "stderr", "null")]


def encode(ports: Mapping[str, str]) -> str:
    """`serial_consoles[1].output=out0 console_output=out1`: key, port name (keys hold
    neither spaces nor `=`)."""
    return " ".join(f"{key}={name}" for key, name in ports.items())


def port_device(key: str) -> str | None:
    """Inside the emulated host: the device of the output port for the file at `key`, if the
    vmrun outside gave it one; else None (the output is written here, as named)."""
    if not inside_emulated_host():
        return None
    entries = os.environ.get(OUTPUT_PORTS_ENV, "").split()
    given = dict(entry.split("=", 1) for entry in entries if "=" in entry)
    name = given.get(key)
    if name is None:
        return None
    for port in sorted(VIRTIO_PORTS.glob("*")):
        try:
            if (port / "name").read_text().strip() == name:
                return f"/dev/{port.name}"
        except OSError:
            continue
    raise OutputPortError(f"the emulated host has no virtio-serial port {name!r}")
