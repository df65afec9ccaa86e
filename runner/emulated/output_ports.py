"""A VM's output files, when it runs in the emulated host: written by the vmrun outside.

The emulated host would otherwise need the directory of every output file shared
read-write (9p shares directories, not files): an output `~/vm.log` would make the whole
home directory writable in there. Instead the vmrun outside opens each file itself (with
the same checks as on a host's KVM) and gives it a virtio-serial port of its own; the vmrun
inside writes the console's output to that port, found by the name that `OUTPUT_PORTS_ENV`
gives for the console's index.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from runner.errors import VmrunError
from runner.host_kvm import inside_emulated_host

OUTPUT_PORTS_ENV = "VMRUN_OUTPUT_PORTS"
VIRTIO_PORTS = Path("/sys/class/virtio-ports")


class OutputPortError(VmrunError):
    """The vmrun outside gave a console a port that the emulated host does not have."""


def port_name(index: int) -> str:
    return f"out{index}"


def encode(ports: Mapping[int, str]) -> str:
    """`0=out0 2=out2`: serial console index, port name."""
    return " ".join(f"{index}={name}" for index, name in sorted(ports.items()))


def port_device(index: int) -> str | None:
    """Inside the emulated host: the device of serial console `index`'s output port, if the
    vmrun outside gave it one; else None (the console's output is written here, as named)."""
    if not inside_emulated_host():
        return None
    entries = os.environ.get(OUTPUT_PORTS_ENV, "").split()
    given = dict(entry.split("=", 1) for entry in entries if "=" in entry)
    name = given.get(str(index))
    if name is None:
        return None
    for port in sorted(VIRTIO_PORTS.glob("*")):
        try:
            if (port / "name").read_text().strip() == name:
                return f"/dev/{port.name}"
        except OSError:
            continue
    raise OutputPortError(f"the emulated host has no virtio-serial port {name!r}")
