"""The devices of a VM file: virtio-fs, block, net, vsock, consoles, GPU, sound and input.

Each class mirrors one device configuration of libkrun's VmResources (see
docs/architecture.md for the mapping); none of them owns a live device.
"""

from __future__ import annotations

from typing import Literal

import attrs

from runner.config.fields import PathUse, setting

ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
MAC_PATTERN = r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$"
# libkrun copies the tag into a fixed 36-byte field of the virtio-fs config space.
FS_TAG_MAX_BYTES = 36
# Linux's IFNAMSIZ (16) with the NUL: an interface name is at most 15 bytes, and
# dev_valid_name refuses `.`, `..`, and names with `/`, `:` or white space (the schema's
# pattern says `/` and white space; checks.py the rest, and the bytes).
TAP_NAME_MAX_BYTES = 15
TAP_NAME_PATTERN = r"^[^/\s]+$"
# x86-64's architectural limit (MAXPHYADDR) on guest physical addresses: 52 bits. Anything
# placed in the guest's address space (a kernel, a shared-memory window) ends below it.
MAX_GUEST_ADDRESS = 2**52 - 1


@attrs.frozen(kw_only=True)
class FsShare:
    """A host directory shared with the guest over virtio-fs."""

    tag: str = setting(
        "The mount tag the guest uses (`mount -t virtiofs TAG /mnt`); at most 36 bytes.",
        minLength=1,
        maxLength=FS_TAG_MAX_BYTES,
    )
    shared_dir: str = setting(
        "Host directory to share, relative to the VM file.", path=PathUse.DIR, minLength=1
    )
    read_only: bool = setting("Refuse every write from the guest.", False)
    dax_window_mib: int = setting(
        "Size of the DAX window (shared memory the guest maps files into); 0 disables DAX.",
        0,
        minimum=0,
        maximum=65536,
    )


DiskFormat = Literal["raw", "qcow2"]
CacheMode = Literal["unsafe", "writeback"]
SyncMode = Literal["none", "relaxed", "full"]


@attrs.frozen(kw_only=True)
class BlockDevice:
    """A host file exposed to the guest as a virtio-blk disk (/dev/vda, /dev/vdb, ... in order)."""

    id: str = setting("Unique name of the disk.", pattern=ID_PATTERN, maxLength=64)
    path: str = setting("Disk image on the host, relative to the VM file.", path=PathUse.DISK)
    format: DiskFormat = setting("Image format.", "raw")
    read_only: bool = setting("Expose the disk read-only.", False)
    cache: CacheMode = setting(
        "`writeback`: the guest sees a volatile write cache and flushes it; "
        "`unsafe`: flush requests are ignored.",
        "writeback",
    )
    sync: SyncMode = setting(
        'What a guest flush does on the host with `cache = "writeback"`: `none` nothing, '
        "`relaxed` fdatasync (the data and the metadata needed to read it), `full` fsync.",
        "full",
    )
    direct_io: bool = setting("Open the image with O_DIRECT (bypass the host page cache).", False)


@attrs.frozen(kw_only=True)
class PasstBackend:
    """Network through passt (user-mode networking); vmrun starts passt unless a socket is given."""

    type: Literal["passt"] = setting("Backend kind.", "passt")
    socket_path: str | None = setting(
        "Unix stream socket of an already running passt; absent: vmrun starts its own.",
        None,
        path=PathUse.PARENT,
    )


@attrs.frozen(kw_only=True)
class TapBackend:
    """Network through a host TAP interface."""

    type: Literal["tap"] = setting("Backend kind.", "tap")
    tap_name: str = setting(
        "Name of the host TAP interface (at most 15 bytes; no `/`, `:` or white space).",
        minLength=1,
        maxLength=TAP_NAME_MAX_BYTES,
        pattern=TAP_NAME_PATTERN,
    )


@attrs.frozen(kw_only=True)
class UnixStreamBackend:
    """Ethernet frames over a unix stream socket (length-prefixed, as passt uses)."""

    type: Literal["unixstream"] = setting("Backend kind.", "unixstream")
    socket_path: str = setting("Unix stream socket to connect to.", path=PathUse.PARENT)


@attrs.frozen(kw_only=True)
class UnixGramBackend:
    """Ethernet frames over a unix datagram socket (gvproxy, vfkit style)."""

    type: Literal["unixgram"] = setting("Backend kind.", "unixgram")
    socket_path: str = setting("Unix datagram socket to send to.", path=PathUse.PARENT)
    send_vfkit_magic: bool = setting("Send the vfkit handshake first (gvproxy needs it).", False)


NetBackend = PasstBackend | TapBackend | UnixStreamBackend | UnixGramBackend

NetFeature = Literal[
    "csum",
    "guest_csum",
    "guest_tso4",
    "guest_tso6",
    "guest_ufo",
    "host_tso4",
    "host_tso6",
    "host_ufo",
]


@attrs.frozen(kw_only=True)
class NetworkInterface:
    """A virtio-net interface."""

    id: str = setting("Unique name of the interface.", pattern=ID_PATTERN, maxLength=64)
    mac: str | None = setting(
        "Unicast MAC address (aa:bb:cc:dd:ee:ff); absent: a locally administered one "
        "derived from the id.",
        None,
        pattern=MAC_PATTERN,
    )
    backend: NetBackend = setting("Where the interface's frames go on the host.")
    features: tuple[NetFeature, ...] = setting(
        "Offload features offered to the guest (virtio-net feature bits).",
        factory=tuple,
        uniqueItems=True,
    )


VsockDirection = Literal["guest_connects", "host_connects"]
TsiFlag = Literal["hijack_inet", "hijack_unix"]


@attrs.frozen(kw_only=True)
class VsockPort:
    """A vsock port bridged to a unix socket on the host."""

    port: int = setting("Vsock port in the guest.", minimum=1, maximum=4294967295)
    socket_path: str = setting(
        "Host unix socket: vmrun listens on it (host_connects) or connects to it (guest_connects).",
        path=PathUse.PARENT,
    )
    direction: VsockDirection = setting(
        "`guest_connects`: the guest connects out to the host socket; "
        "`host_connects`: the guest listens and host programs connect in through the socket.",
        "guest_connects",
    )


@attrs.frozen(kw_only=True)
class TcpPort:
    """A host TCP port forwarded to a guest TCP port (through TSI)."""

    host_port: int = setting("TCP port on the host.", minimum=1, maximum=65535)
    guest_port: int = setting("TCP port in the guest.", minimum=1, maximum=65535)


@attrs.frozen(kw_only=True)
class Vsock:
    """The virtio-vsock device; absent: no vsock device."""

    guest_cid: int = setting(
        "Context id of the guest (0-2 are reserved).", 3, minimum=3, maximum=4294967294
    )
    tsi: tuple[TsiFlag, ...] = setting(
        "Transparent Socket Impersonation: guest sockets of these kinds are carried over vsock "
        "by the host.",
        factory=tuple,
        uniqueItems=True,
    )
    ports: tuple[VsockPort, ...] = setting(
        "Vsock ports mapped to host unix sockets.", factory=tuple
    )
    tcp_ports: tuple[TcpPort, ...] = setting(
        "Host TCP ports forwarded into the guest (needs tsi hijack_inet).", factory=tuple
    )


@attrs.frozen(kw_only=True)
class SerialConsole:
    """A 16550 UART (COM1, COM2, ... in order; the guest's ttyS0, ttyS1, ...)."""

    input: str = setting(
        "`stdin`, `null` or a host file to read the guest's input from.",
        "null",
        path=PathUse.STREAM_IN,
    )
    output: str = setting(
        "`stdout`, `stderr`, `null` or a host file to write the guest's output to.",
        "stdout",
        path=PathUse.STREAM_OUT,
    )


@attrs.frozen(kw_only=True)
class AutoVirtioConsole:
    """A virtio console with vmrun's default ports: console input/output and a port for stderr."""

    type: Literal["auto"] = setting("Console kind.", "auto")
    input: str = setting("`stdin`, `null` or a host file.", "stdin", path=PathUse.STREAM_IN)
    output: str = setting(
        "`stdout`, `stderr`, `null` or a host file.", "stdout", path=PathUse.STREAM_OUT
    )
    err: str = setting(
        "Where the guest's stderr port goes: `stdout`, `stderr`, `null` or a host file.",
        "stderr",
        path=PathUse.STREAM_OUT,
    )


@attrs.frozen(kw_only=True)
class TtyPort:
    """A console port bound to a host terminal."""

    type: Literal["tty"] = setting("Port kind.", "tty")
    name: str = setting("Port name the guest sees (/dev/vport*p* name).", minLength=1)
    tty: str = setting(
        "Host terminal device, or `stdin` for vmrun's own terminal.",
        "stdin",
        path=PathUse.STREAM_IN,
    )


@attrs.frozen(kw_only=True)
class InOutPort:
    """A console port with separate input and output."""

    type: Literal["inout"] = setting("Port kind.", "inout")
    name: str = setting("Port name the guest sees.", minLength=1)
    input: str = setting("`stdin`, `null` or a host file.", "null", path=PathUse.STREAM_IN)
    output: str = setting(
        "`stdout`, `stderr`, `null` or a host file.", "stdout", path=PathUse.STREAM_OUT
    )


ConsolePort = TtyPort | InOutPort


@attrs.frozen(kw_only=True)
class ExplicitVirtioConsole:
    """A virtio console with the ports listed."""

    type: Literal["ports"] = setting("Console kind.", "ports")
    ports: tuple[ConsolePort, ...] = setting("The console's ports, in order.", minItems=1)


VirtioConsole = AutoVirtioConsole | ExplicitVirtioConsole

VirglFlag = Literal[
    "use_egl",
    "thread_sync",
    "use_glx",
    "use_surfaceless",
    "use_gles",
    "use_external_blob",
    "venus",
    "no_virgl",
    "use_async_fence_cb",
    "render_server",
    "drm",
]


@attrs.frozen(kw_only=True)
class Display:
    """A display (scanout) of the virtio-gpu device."""

    width: int = setting("Width in pixels.", minimum=1, maximum=16384)
    height: int = setting("Height in pixels.", minimum=1, maximum=16384)
    refresh_rate: int = setting("Refresh rate in Hz.", 60, minimum=1, maximum=1000)


@attrs.frozen(kw_only=True)
class Gpu:
    """A virtio-gpu device rendered through virglrenderer; absent: no GPU."""

    virgl_flags: tuple[VirglFlag, ...] = setting(
        "virglrenderer flags (VIRGLRENDERER_* without the prefix).", factory=tuple, uniqueItems=True
    )
    shm_size: int | None = setting(
        "Size in bytes of the host-visible shared memory region; absent: vmrun's default.",
        None,
        minimum=4096,
        maximum=MAX_GUEST_ADDRESS + 1,
    )
    displays: tuple[Display, ...] = setting("Displays, in order.", factory=tuple, maxItems=16)


@attrs.frozen(kw_only=True)
class InputBackend:
    """A virtio-input device fed from a host evdev device."""

    device: str = setting("Host evdev device (/dev/input/eventN).", path=PathUse.DEVICE)
