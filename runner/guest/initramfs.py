"""The guest's initramfs: vmrun's init, its configuration, and a small userland.

Linux unpacks concatenated archives in order, later files replacing earlier ones, so the
image is: the file's own initramfs (if any), then vmrun's base (busybox-static as /bin, the
init as /init; built once and cached), then a small archive with this run's configuration
(`/vmrun/config`, the format of native/init/README.md).
"""

from __future__ import annotations

import importlib.util
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

from runner import progress
from runner.boot.initramfs import Entry, compressed, cpio
from runner.cache import cache_dir, write_atomically
from runner.config.model import BlockRoot, VmResources
from runner.errors import VmrunError
from runner.guest import debian
from runner.guest.modules import guest_module_paths, modules_archive
from runner.host_files import read_regular

NATIVE_INIT = Path(__file__).resolve().parents[2] / "native" / "init"
# Written by setup.py beside the init it compiled at install time: its sources' digest.
INSTALLED_INIT = Path(__file__).resolve().parent / "init.digest"
CONFIG_MAGIC = b"vmrun-init-config 1"
CONFIG_END = b"end"


BUSYBOX_PACKAGE = "busybox-static"


class GuestImageError(VmrunError):
    """The guest's init or userland cannot be built."""


def _init_build_module() -> ModuleType:  # native/init/build.py is not in the package
    spec = importlib.util.spec_from_file_location("vmrun_init_build", NATIVE_INIT / "build.py")
    if spec is None or spec.loader is None or not (NATIVE_INIT / "build.py").exists():
        raise GuestImageError(f"the guest init's sources are not at {NATIVE_INIT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def guest_init() -> Path:
    """vmrun's static init: the one `pip install` compiled, unless this is a checkout whose
    init sources have changed since (then compiled once per source content into the cache)."""
    installed = INSTALLED_INIT.parent / "init"
    if not NATIVE_INIT.is_dir():  # an installed wheel: no sources to rebuild from
        if not installed.exists():
            raise GuestImageError(f"the guest init is missing at {installed}: reinstall vmrun")
        return installed
    build = _init_build_module()
    recorded = INSTALLED_INIT.read_text().strip() if INSTALLED_INIT.exists() else ""
    if recorded and installed.exists():
        # No source newer than the installed init: it was built from these (hashing the
        # sources would load OpenSSL into the VMM, megabytes of its memory, on every run).
        built = installed.stat().st_mtime_ns
        if all(path.stat().st_mtime_ns <= built for path in build.inputs()):
            return installed
    digest = build.source_digest()
    if installed.exists() and recorded == digest:
        return installed
    target = cache_dir("init", digest[:16]) / "init"
    if not target.exists():
        progress.slow("compiling the guest's init (its sources changed since installation)")
        try:
            build.build_init(str(target))
        except (build.InitBuildError, OSError, subprocess.SubprocessError) as exc:
            raise GuestImageError(f"cannot build the guest init: {exc}") from exc
    return target


def base_image() -> Path:
    """The gzip archive of the init and busybox-static (with its applets), built once into
    the cache."""
    init = guest_init()
    deb = debian.fetch(BUSYBOX_PACKAGE)
    # Which init and busybox it holds, kept beside it and compared whole: the name is only a
    # checksum of that (the init's path and stat change whenever it is built again).
    built = init.stat()
    identity = f"{init}\n{built.st_mtime_ns}\n{built.st_size}\n{deb.name}\n"
    name = f"base-{zlib.crc32(identity.encode()):08x}"
    target = cache_dir("guest") / f"{name}.cpio.gz"
    key = target.with_name(f"{name}.key")
    if not (target.exists() and key.exists() and key.read_text() == identity):
        progress.slow("building the guest's initramfs (vmrun's init and busybox)")
        busybox, applets = _busybox()
        entries = [Entry.directory(d) for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin")]
        entries.append(Entry.file("bin/busybox", busybox, 0o755))
        entries += [Entry.symlink(f"bin/{name}", "busybox") for name in applets]
        entries += [Entry.directory("vmrun"), Entry.file("init", init.read_bytes(), 0o755)]
        write_atomically(target, compressed(cpio(entries)))
        write_atomically(key, identity.encode())
    return target


def _busybox() -> tuple[bytes, list[str]]:
    """busybox-static and its applets. It runs on the host to list them (it is static), so
    it is taken from its .deb, SHA256 checked again, unpacked afresh into a private directory,
    never from what the cache already holds unpacked."""
    deb = debian.verified(BUSYBOX_PACKAGE)
    with tempfile.TemporaryDirectory(dir=cache_dir("guest")) as fresh:
        busybox = debian.unpack_into(deb, Path(fresh)) / "bin" / "busybox"
        return busybox.read_bytes(), _applets(busybox)


def _applets(busybox: Path) -> list[str]:
    """The applets this busybox has (it is static: it runs on the host to say so)."""
    result = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GuestImageError(f"{busybox} --list failed: {result.stderr.strip()}")
    return [name for name in result.stdout.split() if "/" not in name and name != "busybox"]


def escape(value: str) -> bytes:
    """A config value: UTF-8, `\\` and control bytes escaped (NUL cannot be written)."""
    out = bytearray()
    for byte in value.encode("utf-8", "surrogateescape"):
        if byte == 0:
            raise GuestImageError("a value for the guest init cannot hold a NUL character")
        if byte == 0x5C:
            out += b"\\\\"
        elif byte == 0x0A:
            out += b"\\n"
        elif byte < 0x20 or byte == 0x7F:
            out += b"\\x%02x" % byte
        else:
            out.append(byte)
    return bytes(out)


def render_config(lines: Iterable[tuple[str, str]]) -> bytes:
    body = b"".join(key.encode() + b" " + escape(value) + b"\n" for key, value in lines)
    return CONFIG_MAGIC + b"\n" + body + CONFIG_END + b"\n"


def init_config(
    resources: VmResources,
    argv: Sequence[str],
    modules: Sequence[str] = (),
    *,
    console: str | None = None,
    stdio_ports: Sequence[tuple[int, str]] = (),
    virtio_ports: tuple[int, int] = (0, 0),
) -> bytes:
    """What the init runs and how, from the VM file (and `argv`, which replaces exec/args);
    `modules` are paths in the initramfs, loaded in order before the root is mounted.
    `console` is the terminal the init and the workload use instead of /dev/console (e.g.
    /dev/hvc0, waited for after the modules); `stdio_ports` are (fd, port name) pairs: the
    virtio port of that name becomes the workload's fd 0, 1 or 2; `virtio_ports` the number
    of the consoles' ports and of those named, which the init waits for."""
    workload = resources.workload
    lines: list[tuple[str, str]] = [("hostname", (workload and workload.hostname) or "vmrun")]
    lines += [("module", "/" + path) for path in modules]
    if console is not None:
        lines.append(("console", console))
    lines += [("stdio-port", f"{fd} {name}") for fd, name in stdio_ports]
    if virtio_ports != (0, 0):
        lines.append(("virtio-ports", f"{virtio_ports[0]} {virtio_ports[1]}"))
    if workload is not None:
        lines += [("env", f"{name}={value}") for name, value in workload.env.items()]
        lines.append(("workdir", workload.workdir))
        lines += [
            ("rlimit", f"{name} {limit.soft} {limit.hard}")
            for name, limit in workload.rlimits.items()
        ]
    lines += _root_lines(resources)
    lines.append(("exec", argv[0]))
    lines += [("arg", arg) for arg in argv[1:]]
    return render_config(lines)


def disk_device(index: int) -> str:
    """The guest's node for the `index`-th disk of `block`: virtio_blk names disks in probe
    order, which is the order of the file's list (runner/config/slots.py), as Linux's
    virtblk_name_format does: vda .. vdz, vdaa, ..."""
    name = ""
    index += 1
    while index:
        index, digit = divmod(index - 1, 26)
        name = chr(ord("a") + digit) + name
    return f"/dev/vd{name}"


def _root_lines(resources: VmResources) -> list[tuple[str, str]]:
    root = resources.root
    if not isinstance(root, BlockRoot):
        return [("root", "initramfs")]
    index = next(i for i, disk in enumerate(resources.block) if disk.id == root.id)
    options = root.options
    if resources.block[index].read_only and "ro" not in options.split(","):
        # A read-only disk cannot be mounted read-write (the kernel refuses with EACCES).
        options = ",".join(filter(None, ("ro", options)))
    return [
        ("root", "block"),
        ("root-device", disk_device(index)),
        ("root-fstype", root.fs_type),
        ("root-options", options),
    ]


def guest_initramfs_parts(
    resources: VmResources,
    argv: Sequence[str],
    *,
    console: str | None = None,
    stdio_ports: Sequence[tuple[int, str]] = (),
    virtio_ports: tuple[int, int] = (0, 0),
) -> list[bytes]:
    """The archives of this run's initramfs, in order: laid one after the other they are the
    initramfs (the builder writes them so into guest memory, sparing a copy of megabytes).
    `console` and `stdio_ports` are the workload's stdio (runner/devices/virtio/console_plan.py)."""
    parts = []
    if resources.kernel.initramfs:
        mem_size = resources.machine.mem_size_mib << 20
        user = read_regular(resources.kernel.initramfs, "kernel.initramfs", mem_size)
        parts.append(user + bytes(-len(user) % 4))
    base = base_image().read_bytes()
    # An uncompressed archive is found only at a multiple of 4 bytes (Linux's
    # unpack_to_rootfs); zeros after a compressed one are skipped.
    parts.append(base + bytes(-len(base) % 4))
    modules = modules_archive(resources)
    if modules is not None:
        # Not compressed (a cpio's size is a multiple of 4): unpacking in the guest would
        # cost more than copying its few hundred KiB.
        parts.append(modules.read_bytes())
    config = init_config(
        resources,
        argv,
        guest_module_paths(resources),
        console=console,
        stdio_ports=stdio_ports,
        virtio_ports=virtio_ports,
    )
    parts.append(compressed(cpio([Entry.directory("vmrun"), Entry.file("vmrun/config", config)])))
    return parts


def guest_initramfs(
    resources: VmResources,
    argv: Sequence[str],
    *,
    console: str | None = None,
    stdio_ports: Sequence[tuple[int, str]] = (),
    virtio_ports: tuple[int, int] = (0, 0),
) -> bytes:
    """The whole initramfs for this run."""
    parts = guest_initramfs_parts(
        resources, argv, console=console, stdio_ports=stdio_ports, virtio_ports=virtio_ports
    )
    return b"".join(parts)
