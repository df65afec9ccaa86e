"""The emulated host's QEMU command line (runner/emulated/host.py runs it)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runner.emulated import snapshot
from runner.emulated.image import HostImage
from runner.emulated.inbound_ports import INBOUND_PORTS

if TYPE_CHECKING:
    from runner.emulated.host import Settings

QEMU = "qemu-system-x86_64"


def qemu_command(
    image: HostImage,
    settings: Settings,
    scratch: Path,
    devices: tuple[list[str], Sequence[tuple[str, int]], Mapping[str, Path]],
    saved: snapshot.Plan | None,
    passed: Sequence[int],
) -> list[str]:
    """QEMU's command line. With `saved`, the fixed set of devices of a host that can be saved
    and restored (runner/emulated/snapshot.py), and its state's fd (`passed`' last) to restore."""
    writable, pipes, sockets = devices

    def share(path: str, tag: str, read_only: bool = False) -> list[str]:
        # QEMU splits an option's value at each comma; a doubled comma is a literal one, so
        # a directory named "a,readonly=off" cannot add options of its own.
        escaped = path.replace(",", ",,")
        spec = f"local,path={escaped},mount_tag={tag},security_model=none,multidevs=remap"
        return ["-virtfs", spec + (",readonly=on" if read_only else "")]

    def port(name: str, chardev: str) -> list[str]:
        return [
            "-chardev", f"{chardev},id={name}",
            "-device", f"virtserialport,bus=ports.0,chardev={name},name={name}",
        ]  # fmt: skip

    # loglevel=5: the console shows a kernel oops (printed at the default level, 4), so that
    # a crash of the emulated host's own kernel says what failed. cryptomgr.notests: the
    # crypto self-tests took 0.3 s of its boot under TCG, and nothing in this throwaway host
    # (no disk, no network) relies on its crypto.
    append = "console=ttyS0 quiet loglevel=5 panic=-1 rdinit=/init cryptomgr.notests"
    cmd = [
        QEMU,
        "-accel", f"tcg,thread={settings.tcg_threads}",
        "-cpu", "max",
        "-machine", "q35",
        "-smp", str(settings.cpus),
        "-m", str(settings.memory_mib),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", os.path.abspath(image.kernel),  # QEMU runs in the scratch directory
        "-initrd", os.path.abspath(image.initramfs),
        "-serial", f"file:{scratch / 'console.log'}",
        "-device", "virtio-serial-pci,id=ports",
    ]  # fmt: skip
    if saved is None:
        # qboot (qemu-system-data) rather than SeaBIOS: it only loads the kernel, about half a
        # second sooner under TCG.
        cmd += ["-bios", "qboot.rom", "-append", append]
    else:
        # SeaBIOS: qboot hangs with a vmgenid device. `vmrun.snapshot` tells the init to stop
        # at its snapshot point.
        cmd += ["-append", append + " vmrun.snapshot", "-device", "vmgenid"]
        monitor = _escaped(scratch / snapshot.MONITOR_SOCKET)
        cmd += ["-chardev", f"socket,id=monitor,path={monitor},server=on,wait=off"]
        cmd += ["-mon", "chardev=monitor,mode=control"]
        if saved.restore:
            cmd += ["-incoming", f"fd:{passed[-1]}"]
    outputs = dict(pipes)
    names = list(outputs)
    if saved is not None:  # every output slot, in their order, then events
        names = ["stdout", "stderr", *snapshot.OUTPUT_NAMES, "events"]
    for name in names:
        fd = outputs.get(name)
        cmd += port(name, "null" if fd is None else f"file,path=/proc/self/fd/{fd}")
    inbound = list(sockets) if saved is None else list(INBOUND_PORTS)
    for name in inbound:  # QEMU connects to vmrun's socket (inbound_ports.py)
        path = sockets.get(name)
        cmd += port(name, "null" if path is None else f"socket,path={_escaped(path)}")
    if saved is not None:
        cmd += port("go", f"socket,path={_escaped(scratch / snapshot.GO_SOCKET)}")
    cmd += share("/", "host", read_only=True) + share(str(scratch), "scratch")
    slots = len(writable) if saved is None else snapshot.SHARE_SLOTS
    for index in range(slots):
        # An idle slot shares the scratch directory, which the init does not mount there.
        cmd += share(writable[index] if index < len(writable) else str(scratch), f"rw{index}")
    return cmd


def _escaped(path: Path) -> str:
    return str(path).replace(",", ",,")
