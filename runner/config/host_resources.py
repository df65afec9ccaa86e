"""Host resources that one device holds alone. Two devices of a VM file on one of them fail
only when the VM starts (a TAP interface attached twice: EBUSY; a socket path bound twice:
EADDRINUSE), or worse, do not fail (two interfaces' frames mixed in one passt stream, an
input device's events split between two readers). The rule names both users.

- a TAP interface: one interface's tap backend.
- a unix socket path: one interface's socket (passt, unixstream, unixgram); a vsock port
  vmrun listens on (`host_connects`) shares its path with nothing at all. Vsock ports and
  interfaces that connect out to one socket (`guest_connects`) are that socket's server's
  business, and allowed.
- an input device (evdev): one virtio-input device (the reader grabs it).
- a disk image that a block device writes: that device only. Several read-only devices may
  share one image; as QEMU's image locking has it, a writer shares with no one (a reader
  would see blocks change under its file system, two writers corrupt it).

Paths are compared as the file system resolves them (`os.path.realpath`: lstat and readlink,
nothing is opened), so `./sock` and a link to it are one socket.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import attrs

from runner.config.devices import TapBackend
from runner.config.model import VmResources
from runner.config.problems import KeyPath, Problem, format_key_path

TAP, INTERFACE_SOCKET, LISTENER, VSOCK_CONNECTION, INPUT_DEVICE, DISK_WRITER, DISK_READER = (
    "tap", "interface socket", "listener", "vsock connection", "input device", "disk writer",
    "disk reader",
)  # fmt: skip
# Which uses of one resource cannot go with which: symmetric, each role against itself too.
EXCLUDES = {
    TAP: {TAP},
    INTERFACE_SOCKET: {INTERFACE_SOCKET, LISTENER},
    LISTENER: {INTERFACE_SOCKET, LISTENER, VSOCK_CONNECTION},
    VSOCK_CONNECTION: {LISTENER},
    INPUT_DEVICE: {INPUT_DEVICE},
    DISK_WRITER: {DISK_WRITER, DISK_READER},
    DISK_READER: {DISK_WRITER},
}
WHY = {
    TAP: "a TAP interface carries one interface's frames",
    INTERFACE_SOCKET: "a network socket carries one interface's frames",
    LISTENER: "vmrun listens on it for one vsock port",
    VSOCK_CONNECTION: "vmrun listens there for another vsock port",
    INPUT_DEVICE: "an input device has one reader",
    DISK_WRITER: "a disk image that a device writes is that device's alone",
    DISK_READER: "another device writes that image",
}


@attrs.frozen
class Claim:
    """One device's use of a host resource."""

    resource: tuple[str, str]  # (what kind, which one), as the message names it
    where: KeyPath
    role: str


def exclusive_host_resources(r: VmResources) -> Iterator[Problem]:
    holders: dict[tuple[str, str], list[Claim]] = {}
    for claim in claims(r):
        others = holders.setdefault(claim.resource, [])
        clash = next((o for o in others if o.role in EXCLUDES[claim.role]), None)
        if clash is not None:
            kind, name = claim.resource
            why = WHY[claim.role] if clash.role in EXCLUDES[claim.role] else WHY[clash.role]
            yield Problem(
                claim.where,
                f"{kind} {name} is already used by {format_key_path(clash.where)}; {why}",
            )
        others.append(claim)


def claims(r: VmResources) -> Iterator[Claim]:
    """Every use of a sole host resource by a device of `r`, in file order."""
    for index, nic in enumerate(r.net):
        backend, where = nic.backend, ("net", index, "backend")
        if isinstance(backend, TapBackend):
            tap = ("the TAP interface", backend.tap_name)
            yield Claim(tap, (*where, "tap_name"), TAP)
        elif backend.socket_path is not None:
            yield Claim(_path(backend.socket_path), (*where, "socket_path"), INTERFACE_SOCKET)
    for index, port in enumerate(r.vsock.ports if r.vsock else ()):
        role = LISTENER if port.direction == "host_connects" else VSOCK_CONNECTION
        yield Claim(_path(port.socket_path), ("vsock", "ports", index, "socket_path"), role)
    for index, disk in enumerate(r.block):
        role = DISK_READER if disk.read_only else DISK_WRITER
        yield Claim(_path(disk.path), ("block", index, "path"), role)
    for index, device in enumerate(r.input_backends):
        yield Claim(_path(device.device), ("input_backends", index, "device"), INPUT_DEVICE)


def _path(value: str) -> tuple[str, str]:
    try:
        return ("the host path", os.path.realpath(value))
    except (OSError, ValueError):  # a NUL or a loop: the path checks say what is wrong
        return ("the host path", value)
