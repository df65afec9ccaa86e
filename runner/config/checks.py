"""Semantic rules: what the schema cannot say. Each rule returns every problem it finds."""

from __future__ import annotations

import collections
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from runner.arch.x86_64 import layout, smbios
from runner.boot import cmdline
from runner.boot.footprint import kernel_footprint
from runner.config.devices import (
    FS_TAG_MAX_BYTES,
    TAP_NAME_MAX_BYTES,
    AutoVirtioConsole,
    PasstBackend,
    TapBackend,
    UnixGramBackend,
    UnixStreamBackend,
)
from runner.config.host_resources import exclusive_host_resources
from runner.config.model import BlockRoot, FsRoot, VmResources
from runner.config.problems import KeyPath, Problem, format_key_path
from runner.config.slots import virtio_slots

Rule = Callable[[VmResources], Iterable[Problem]]

PAGE_SIZE = 4096
QBOOT_SIZE = 64 * 1024  # libkrun refuses any other qboot size
SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL


def hyperthreading(r: VmResources) -> Iterator[Problem]:
    m = r.machine
    if m.ht_enabled and m.vcpu_count > 1 and m.vcpu_count % 2:
        yield Problem(
            ("machine", "vcpu_count"),
            f"{m.vcpu_count} vCPUs cannot be hyperthread pairs; with ht_enabled use 1 or an "
            "even number",
        )


def memory_fits_images(r: VmResources) -> Iterator[Problem]:
    """The images' file sizes against the guest's memory: what `stat` says, since validation
    never opens a file the VM file names (the kernel's header is read by `vmrun run`)."""
    yield from _memory_problems(r, _file_sizes(r))


def memory_fits_kernel_image(r: VmResources) -> Iterator[Problem]:
    """As memory_fits_images, with what the kernel's own header says it needs (a bzImage's
    init_size, an ELF's segments, a gzip image's size): for `vmrun run`, which reads it."""
    images = _file_sizes(r)
    if "kernel" in images:
        images["kernel"] = max(images["kernel"], kernel_footprint(r.kernel.path or ""))
    yield from _memory_problems(r, images)


# What vmrun's default kernel (Debian 12's cloud kernel, 6.1) needs in guest memory: its
# bzImage header's init_size, 51.5 MiB for 6.1.0-57, rounded up. Validation opens no file,
# and the kernel may not be downloaded yet, so it is a constant here; a test holds it to the
# kernel vmrun downloads (tests/guest/test_default_kernel_footprint.py).
DEFAULT_KERNEL_FOOTPRINT = 52 * layout.MIB


def _file_sizes(r: VmResources) -> dict[str, int]:
    images = {}
    if r.kernel.path is None and r.kernel_bundle is None:
        images["default kernel"] = DEFAULT_KERNEL_FOOTPRINT
    for name, path in (("kernel", r.kernel.path), ("initramfs", r.kernel.initramfs)):
        try:
            info = os.stat(path) if path else None
        except (OSError, ValueError):
            continue
        if info is not None and stat.S_ISREG(info.st_mode):
            images[name] = info.st_size
    return images


def _memory_problems(r: VmResources, images: dict[str, int]) -> Iterator[Problem]:
    if not images:
        return
    needed = layout.KERNEL_START + sum(images.values()) + layout.GUEST_WORKING_SET
    have = r.machine.mem_size_mib * layout.MIB
    if have < needed:
        where = ("tee_config", "ram_mib") if r.tee_config else ("machine", "mem_size_mib")
        parts = ", ".join(f"the {name} {_mib(size)} MiB" for name, size in images.items())
        yield Problem(
            where,
            f"{r.machine.mem_size_mib} MiB is too small: {parts}, plus "
            f"{_mib(layout.KERNEL_START + layout.GUEST_WORKING_SET)} MiB for the kernel to run, "
            f"need at least {-(-needed // layout.MIB)} MiB",
        )


def _mib(size: int) -> str:
    return f"{size / layout.MIB:.1f}".removesuffix(".0")


def _duplicates(
    section: KeyPath, items: Iterable[Any], key: Callable[[Any], Any], what: str
) -> Iterator[Problem]:
    seen: dict[Any, int] = {}
    for index, item in enumerate(items):
        value = key(item)
        if value is None:
            continue
        if value in seen:
            first = format_key_path(section + (seen[value],))
            yield Problem(section + (index,), f"{what} {value!r} is already used by {first}")
        else:
            seen[value] = index


def unique_names(r: VmResources) -> Iterator[Problem]:
    # Names of host resources too: a TAP interface, a socket, an input device.
    yield from exclusive_host_resources(r)
    yield from _duplicates(("fs",), r.fs, lambda s: s.tag, "tag")
    yield from _duplicates(("block",), r.block, lambda d: d.id, "id")
    yield from _duplicates(("net",), r.net, lambda n: n.id, "id")
    yield from _duplicates(("net",), r.net, lambda n: n.mac and n.mac.lower(), "MAC")
    if r.vsock:
        yield from _duplicates(("vsock", "ports"), r.vsock.ports, lambda p: p.port, "port")
        yield from _duplicates(
            ("vsock", "tcp_ports"), r.vsock.tcp_ports, lambda p: p.host_port, "host port"
        )


# virtio-blk's GET_ID answers 20 bytes: the guest's /sys/block/vdX/serial and its
# /dev/disk/by-id/virtio-SERIAL link.
DISK_SERIAL_BYTES = 20


def disk_serials(r: VmResources) -> Iterator[Problem]:
    seen: dict[bytes, int] = {}
    for index, disk in enumerate(r.block):
        first = seen.setdefault(disk.id.encode()[:DISK_SERIAL_BYTES], index)
        if first != index and r.block[first].id != disk.id:  # equal ids: unique_names says so
            yield Problem(
                ("block", index, "id"),
                f"the guest knows a disk by its id's first {DISK_SERIAL_BYTES} bytes (its "
                f"serial), which are those of block[{first}]'s id {r.block[first].id!r}",
            )


def unicast_macs(r: VmResources) -> Iterator[Problem]:
    for index, nic in enumerate(r.net):
        if nic.mac is None:
            continue
        octets = [int(part, 16) for part in nic.mac.split(":")]
        if octets[0] & 1:
            yield Problem(
                ("net", index, "mac"),
                f"{nic.mac} is a multicast address; use a unicast one (even first octet)",
            )
        elif not any(octets):
            yield Problem(("net", index, "mac"), "00:00:00:00:00:00 is not a usable address")


def fs_tag_bytes(r: VmResources) -> Iterator[Problem]:
    for index, share in enumerate(r.fs):
        size = len(share.tag.encode())
        if size > FS_TAG_MAX_BYTES:
            yield Problem(
                ("fs", index, "tag"),
                f"is {size} bytes in UTF-8; a tag holds at most {FS_TAG_MAX_BYTES}",
            )


def _tap_names(r: VmResources) -> Iterator[Problem]:
    # What Linux's dev_valid_name refuses beyond the schema's pattern; the schema counts
    # characters, the kernel's IFNAMSIZ counts bytes.
    for index, nic in enumerate(r.net):
        if not isinstance(nic.backend, TapBackend):
            continue
        name, where = nic.backend.tap_name, ("net", index, "backend", "tap_name")
        size = len(name.encode())
        if size > TAP_NAME_MAX_BYTES:
            yield Problem(
                where,
                f"is {size} bytes in UTF-8; an interface name holds at most "
                f"{TAP_NAME_MAX_BYTES} (Linux's IFNAMSIZ with its NUL)",
            )
        if ":" in name or name in (".", ".."):
            yield Problem(where, f"{name!r} is no interface name: Linux refuses `:`, `.` and `..`")


def kernel_sources(r: VmResources) -> Iterator[Problem]:
    if r.kernel_bundle is None:
        return
    if r.kernel.path:
        yield Problem(("kernel_bundle",), "give either kernel.path or kernel_bundle, not both")
    bundle = r.kernel_bundle
    if bundle.guest_addr is not None and bundle.guest_addr % PAGE_SIZE:
        yield Problem(
            ("kernel_bundle", "guest_addr"),
            f"{bundle.guest_addr:#x} is not page-aligned (a multiple of {PAGE_SIZE:#x})",
        )
    if bundle.qboot and os.path.isfile(bundle.qboot):
        size = os.path.getsize(bundle.qboot)
        if size != QBOOT_SIZE:
            yield Problem(
                ("kernel_bundle", "qboot"),
                f"is {size} bytes; a qboot image is exactly {QBOOT_SIZE} (64 KiB)",
            )


def tee_rules(r: VmResources) -> Iterator[Problem]:
    if r.tee_config is None:
        return
    for index in range(len(r.fs)):
        yield Problem(("fs", index), "virtio-fs shares are not available in a TEE (tee_config)")


def root_references(r: VmResources) -> Iterator[Problem]:
    root = r.root
    if isinstance(root, FsRoot) and root.tag not in {s.tag for s in r.fs}:
        yield Problem(("root", "tag"), f"no share in `fs` has the tag {root.tag!r}")
    if isinstance(root, BlockRoot) and root.id not in {d.id for d in r.block}:
        yield Problem(("root", "id"), f"no disk in `block` has the id {root.id!r}")


def interrupt_budget(r: VmResources) -> Iterator[Problem]:
    slots = virtio_slots(r)
    if len(slots) > layout.VIRTIO_IRQ_COUNT:
        counts = collections.Counter(slot.kind.name for slot in slots)
        listed = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        yield Problem(
            (),
            f"{len(slots)} virtio devices ({listed}) but only {layout.VIRTIO_IRQ_COUNT} "
            f"interrupt lines (IRQ {layout.VIRTIO_IRQ_FIRST}-{layout.VIRTIO_IRQ_LAST} but the "
            f"RTC's {layout.RTC_IRQ})",
        )


def command_line(r: VmResources) -> Iterator[Problem]:
    parts = list(_command_line_parts(r))
    if parts:
        yield from parts
        return
    try:
        text = cmdline.compose(r)
    except cmdline.CmdlineError as exc:  # what the parts' rules missed
        yield Problem(("kernel_cmdline",), str(exc))
        return
    if not cmdline.fits(text):
        yield Problem(
            ("kernel_cmdline",),
            f"the composed kernel command line is {len(text.encode())} bytes; at most "
            f"{layout.CMDLINE_MAX_BYTES - 1} fit (the kernel's {layout.CMDLINE_MAX_BYTES} "
            "with the terminating NUL)",
        )


def _command_line_parts(r: VmResources) -> Iterator[Problem]:
    """Each part of the command line the file writes, at its own key."""
    line = r.kernel_cmdline
    for key, text, last in (("prolog", line.prolog, False), ("epilog", line.epilog, True)):
        problem = cmdline.part_problem(text or "", last=last)
        if problem:
            # Line breaks were always said of the whole line; the rest at the part.
            where = (
                ("kernel_cmdline",) if problem == cmdline.LINE_BREAKS else ("kernel_cmdline", key)
            )
            yield Problem(where, problem)
    for name, value in line.env.items():
        problem = cmdline.env_value_problem(value)
        if problem:
            yield Problem(("kernel_cmdline", "env", name), problem)


def consoles(r: VmResources) -> Iterator[Problem]:
    name = r.kernel_console
    if name and name.startswith("ttyS") and int(name[4:]) >= len(r.serial_consoles):
        yield Problem(
            ("kernel_console",),
            f"{name} needs {int(name[4:]) + 1} serial_consoles, "
            f"the file has {len(r.serial_consoles)}",
        )
    # An hvc is a console port: the implicit console's and each `auto` console's port 0, in
    # order (a `ports` console's ports are the guest's /dev/vportNpM, not hvcs).
    hvc_count = sum(1 for c in r.virtio_consoles if isinstance(c, AutoVirtioConsole)) + (
        0 if r.disable_implicit_console else 1
    )
    if name and name.startswith("hvc") and int(name[3:]) >= hvc_count:
        yield Problem(
            ("kernel_console",),
            f"{name} needs {int(name[3:]) + 1} console ports (the implicit console and "
            f"`auto` virtio consoles have one each), the VM has {hvc_count}",
        )
    if r.console_output and r.disable_implicit_console:
        yield Problem(
            ("console_output",),
            "is the implicit console's output, but disable_implicit_console is set",
        )


def network_rules(r: VmResources) -> Iterator[Problem]:
    yield from _tap_names(r)
    if r.dhcp_client and not r.net:
        yield Problem(("dhcp_client",), "needs a network interface in `net`")
    if r.vsock and r.vsock.tcp_ports and "hijack_inet" not in r.vsock.tsi:
        yield Problem(
            ("vsock", "tcp_ports"), 'TCP port maps work through TSI: add "hijack_inet" to vsock.tsi'
        )


def socket_paths(r: VmResources) -> Iterator[Problem]:
    sockets = [
        (("net", i, "backend", "socket_path"), nic.backend.socket_path)
        for i, nic in enumerate(r.net)
        if isinstance(nic.backend, PasstBackend | UnixStreamBackend | UnixGramBackend)
        and nic.backend.socket_path is not None
    ]
    if r.vsock:
        sockets += [
            (("vsock", "ports", i, "socket_path"), p.socket_path)
            for i, p in enumerate(r.vsock.ports)
        ]
    for path, value in sockets:
        if len(value.encode()) > SUN_PATH_MAX:
            yield Problem(
                path,
                f"is {len(value.encode())} bytes; a unix socket path holds at most {SUN_PATH_MAX}",
            )


def rlimits(r: VmResources) -> Iterator[Problem]:
    if r.workload is None:
        return
    for name, limit in r.workload.rlimits.items():
        soft = float("inf") if limit.soft == -1 else limit.soft
        hard = float("inf") if limit.hard == -1 else limit.hard
        if soft > hard:
            yield Problem(
                ("workload", "rlimits", name),
                f"soft limit {limit.soft} is above hard limit {limit.hard}",
            )


def oem_strings(r: VmResources) -> Iterator[Problem]:
    for index, message in smbios.oem_strings_problems(r.smbios_oem_strings):
        where: KeyPath = ("smbios_oem_strings",) if index is None else ("smbios_oem_strings", index)
        yield Problem(where, message)


RULES: tuple[Rule, ...] = (
    hyperthreading,
    memory_fits_images,
    unique_names,
    disk_serials,
    unicast_macs,
    fs_tag_bytes,
    kernel_sources,
    tee_rules,
    root_references,
    interrupt_budget,
    command_line,
    consoles,
    network_rules,
    socket_paths,
    rlimits,
    oem_strings,
)


def semantic_problems(resources: VmResources) -> list[Problem]:
    return [problem for rule in RULES for problem in rule(resources)]
