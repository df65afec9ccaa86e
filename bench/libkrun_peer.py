#!/usr/bin/env python3
"""libkrun as a benchmark peer: one command in a box, timed.

Through the `boxlite` wheel, which embeds libkrun and libkrunfw (the guest kernel): start a
box on a busybox-only image, run one command in it, and time the parts.

On these machines it runs only inside `vmrun emulated-host`: the machine's own /dev/kvm is
PVM, on which libkrun stops with KVM_EXIT_INTERNAL_ERROR (shared/notes/nested-kvm-host.md).
Everywhere it cannot run, `run_in_libkrun` raises `PeerUnavailable` saying why.

    vmrun emulated-host --timeout 900 -- PYTHON bench/libkrun_peer.py [--json] [-- CMD ARG...]

(no `--writable /tmp` needed: where /tmp is read-only, this makes its own; boxlite's home
goes to a tmpfs, as its SQLite database fails on the 9p shares).

PYTHON is one with `boxlite` installed (`pip install -e '.[bench]'`). Exit status: the
command's, or 77 (the usual "skipped") when the peer cannot run here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.cache import cache_dir
from runner.guest import debian

# The applets the benchmarks call, linked to /bin/busybox as busybox's installer would.
APPLETS = (
    "sh", "echo", "uname", "true", "false", "cat", "ls", "sleep", "env", "mount", "dmesg",
    "date", "poweroff", "reboot", "halt",
)  # fmt: skip
# Empty directories a container runtime mounts over; present so that it need not create them.
MOUNT_POINTS = ("dev", "proc", "sys", "tmp", "run", "etc", "root")
# Bumped when the layout's making changes, so that the cache key changes with it.
LAYOUT_FORMAT = "1"
SKIPPED = 77  # exit status when the peer cannot run here (automake's and pytest's "skip")
KVM = "/dev/kvm"

# Linux constants for a private /tmp (see _ensure_writable_tmp).
CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


# boxlite runtimes of this process, by home directory (see _run_box).
_RUNTIMES: dict[Path, Any] = {}


class PeerUnavailable(Exception):
    """libkrun cannot run here; the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# The image: an OCI image layout holding busybox-static only.


@functools.cache  # once a process: finding the package asks apt (seconds under emulation)
def busybox_oci_layout() -> Path:
    """A local OCI image layout of busybox-static (cached by content), for `rootfs_path`."""
    deb = debian.fetch("busybox-static")
    key = hashlib.sha256(
        "\0".join((deb.name, LAYOUT_FORMAT, *APPLETS, *MOUNT_POINTS)).encode()
    ).hexdigest()[:16]
    target = cache_dir("peers") / f"busybox-oci-{key}"
    if (target / "index.json").exists():  # written last, so its presence means complete
        return target
    busybox = (debian.unpack(deb) / "bin" / "busybox").read_bytes()
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".part"))
    try:
        partial.chmod(0o755)  # mkdtemp's 0700 would keep the finished layout private
        _write_layout(partial, _layer_tar(busybox))
        try:
            partial.rename(target)
        except OSError:  # another process made it first: theirs is as good
            if not (target / "index.json").exists():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _layer_tar(busybox: bytes) -> bytes:
    """The layer, uncompressed: owners root and times zero, so equal inputs give equal bytes."""

    def info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.type, entry.mode, entry.mtime = kind, mode, 0
        entry.uid = entry.gid = 0
        entry.uname = entry.gname = "root"
        return entry

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info("bin", tarfile.DIRTYPE, 0o755))
        binary = info("bin/busybox", tarfile.REGTYPE, 0o755)
        binary.size = len(busybox)
        tar.addfile(binary, io.BytesIO(busybox))
        for applet in APPLETS:
            link = info(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
        for directory in MOUNT_POINTS:
            tar.addfile(info(directory, tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755))
    return out.getvalue()


def _write_layout(root: Path, layer: bytes) -> None:
    """oci-layout, index.json and blobs/sha256/ (layer, config, manifest) under `root`."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def canonical(value: dict[str, Any]) -> bytes:
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()

    layer_desc = blob(gzip.compress(layer, compresslevel=6, mtime=0), MEDIA_LAYER)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        # diff_ids name the layers uncompressed; runtimes check them after unpacking.
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": blob(canonical(config), MEDIA_CONFIG),
        "layers": [layer_desc],
    }
    manifest_desc = blob(canonical(manifest), MEDIA_MANIFEST)
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest_desc]}
    (root / "index.json").write_text(json.dumps(index, indent=2))


# ---------------------------------------------------------------------------------------------
# Running a command in a box.


def run_in_libkrun(
    argv: list[str], cpus: int = 1, mem_mib: int = 256
) -> tuple[int, str, dict[str, float]]:
    """Start a boxlite box (libkrun) on the busybox image, run `argv` in it, stop it.

    Returns the command's exit status, its output (stdout then stderr) and the seconds taken:
    import_s (loading boxlite's 110 MB extension; 0 when already loaded), box_start_s (the
    box created and its guest booted; on a process's first call also boxlite's runtime set
    up, and on a home's first use its files unpacked and the image made into a disk),
    exec_s (the command), stop_s (the box stopped and removed) and total_s (all of these
    together, from the import on: finding the image is left out, as it asks apt, which
    takes seconds under emulation, and is the benchmark's own cost). Raises PeerUnavailable
    where boxlite cannot run, and boxlite's own error where the command cannot be started
    (say, it is not in the image).
    """
    if not argv:
        raise ValueError("run_in_libkrun needs a command")
    _check_kvm()
    _ensure_writable_tmp()  # first: it needs this process still single-threaded
    layout = busybox_oci_layout()
    home = _local_dir() / "vmrun-boxlite"
    home.mkdir(parents=True, exist_ok=True)
    with _environment(HOME=str(home), BOXLITE_HOME=str(home / "boxlite")):
        began = time.monotonic()
        boxlite = _import_boxlite()
        import_s = time.monotonic() - began
        status, output, box_start_s, exec_s, stop_s = asyncio.run(
            _run_box(boxlite, layout, argv, cpus, mem_mib, home / "boxlite")
        )
    timings = {
        "import_s": import_s,
        "box_start_s": box_start_s,
        "exec_s": exec_s,
        "stop_s": stop_s,
        "total_s": time.monotonic() - began,
    }
    return status, output, timings


def _check_kvm() -> None:
    if Path("/sys/module/kvm_pvm").exists():
        raise PeerUnavailable(
            "this /dev/kvm is PVM, on which libkrun stops with KVM_EXIT_INTERNAL_ERROR; "
            "run it inside `vmrun emulated-host`"
        )
    try:
        os.close(os.open(KVM, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise PeerUnavailable(f"{KVM} is not usable: {exc.strerror}") from exc


def _import_boxlite() -> Any:
    try:
        import boxlite  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise PeerUnavailable(
            f"boxlite is not installed ({exc}): pip install -e '.[bench]'"
        ) from exc
    # boxlite's __init__ turns a failed native import into a warning and exports nothing.
    if not hasattr(boxlite, "Boxlite") or not hasattr(boxlite, "SimpleBox"):
        raise PeerUnavailable("boxlite's native extension does not load on this machine")
    return boxlite


async def _run_box(
    boxlite: Any, layout: Path, argv: list[str], cpus: int, mem_mib: int, home: Path
) -> tuple[int, str, float, float, float]:
    """(status, output, box_start_s, exec_s, stop_s) of `argv` in a new box."""
    started = time.monotonic()
    try:
        # Its own runtime on its own home, rather than the process-wide default on ~/.boxlite.
        # One per home and process: a home takes one runtime at a time, and closing one does
        # not free its home for the next.
        runtime = _RUNTIMES.get(home)
        if runtime is None:
            runtime = _RUNTIMES[home] = boxlite.Boxlite(boxlite.Options(home_dir=str(home)))
        box = boxlite.SimpleBox(
            rootfs_path=str(layout),
            cpus=cpus,
            memory_mib=mem_mib,
            runtime=runtime,
            # The jailer is bubblewrap, which needs user namespaces; the emulated host has none.
            advanced=boxlite.AdvancedBoxOptions(
                security=boxlite.SecurityOptions(jailer_enabled=False, seccomp_enabled=False)
            ),
        )
        await box.start()
    except (boxlite.BoxliteError, RuntimeError, OSError) as exc:
        raise PeerUnavailable(f"boxlite could not start a box: {exc}") from exc
    box_start_s = time.monotonic() - started
    try:
        exec_began = time.monotonic()
        result = await box.exec(argv[0], *argv[1:])
        exec_s = time.monotonic() - exec_began
    finally:
        stop_began = time.monotonic()
        await box.stop()
        stop_s = time.monotonic() - stop_began
    output = result.stdout + result.stderr
    if result.error_message:  # the box's init died rather than the command ending
        output += f"\n[boxlite] {result.error_message}\n"
    return result.exit_code, output, box_start_s, exec_s, stop_s


# File systems where boxlite's SQLite database fails ("disk I/O error": no POSIX locks there).
SHARED_FS = ("9p", "nfs", "nfs4", "cifs", "smb3", "virtiofs", "fuse", "fuseblk")


def _local_dir() -> Path:
    """A writable directory on a local file system, for boxlite's home: $TMPDIR unless it is
    shared (in the emulated host it is 9p), else the first writable of $XDG_RUNTIME_DIR,
    /run and /dev/shm (tmpfs)."""
    candidates = [tempfile.gettempdir(), os.environ.get("XDG_RUNTIME_DIR"), "/run", "/dev/shm"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.W_OK | os.X_OK):
            fs_type = _fs_type(candidate)
            if fs_type.split(".")[0] not in SHARED_FS:
                return Path(candidate)
    raise PeerUnavailable(
        "no writable directory on a local file system for boxlite's database (tried "
        + ", ".join(c for c in candidates if c)
        + ")"
    )


def _fs_type(path: str) -> str:
    """The type of the file system holding `path` (the mount with the longest matching
    mount point in /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best, best_type = "", ""
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields, _, rest = line.partition(" - ")
            mount_point = fields.split()[4].replace("\\040", " ")
            inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, best_type = mount_point, rest.split()[0]
    return best_type


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block (boxlite and its shim read HOME there)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _ensure_writable_tmp() -> None:
    """Make /tmp writable where it is not: boxlite puts its socket links in /tmp/bl-UID
    whatever TMPDIR says (short paths, for the 108-byte limit of socket addresses).

    In the emulated host / is a read-only share and there is no overlayfs. As root there,
    this process moves to a mount namespace of its own (for good: its children, boxlite's
    shim among them, share it; the host's /tmp is untouched), mounts a tmpfs on /tmp and binds
    each of the old /tmp's entries back into it, so that what lives in /tmp (a venv with
    boxlite, $TMPDIR) stays where it was. Needs this process to be single-threaded still.
    """
    if os.access("/tmp", os.W_OK):
        return
    if os.geteuid() != 0:
        raise PeerUnavailable("/tmp is not writable (boxlite writes there), and not as root")
    keep = _local_dir() / "vmrun-old-tmp"
    if keep.resolve().is_relative_to("/tmp"):
        raise PeerUnavailable("/tmp is not writable and there is no other place to keep it")
    keep.mkdir(exist_ok=True)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def mount(source: str, target: str, fs_type: str | None, flags: int, data: str = "") -> int:
        return libc.mount(  # type: ignore[no-any-return]
            source.encode(), target.encode(), fs_type and fs_type.encode(), flags, data.encode()
        )

    steps = [
        ("unshare the mount namespace", lambda: libc.unshare(CLONE_NEWNS)),
        # Private, so that nothing mounted here propagates back to the host's namespace.
        ("make mounts private", lambda: mount("none", "/", None, MS_REC | MS_PRIVATE)),
        ("keep the old /tmp", lambda: mount("/tmp", str(keep), None, MS_BIND | MS_REC)),
        ("mount a tmpfs on /tmp", lambda: mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777")),
    ]
    for what, step in steps:
        if step() != 0:
            reason = os.strerror(ctypes.get_errno())
            raise PeerUnavailable(f"/tmp is not writable and cannot be replaced ({what}: {reason})")
    for entry in os.scandir(keep):
        place = os.path.join("/tmp", entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), place)
            continue
        if entry.is_dir():
            os.mkdir(place)
        else:
            open(place, "x").close()  # a mount point for the file, socket or fifo
        # An entry that will not bind stays an empty stand-in: one odd file in /tmp should
        # not stop the benchmark, and anything it needs missing shows up as its own error.
        mount(entry.path, place, None, MS_BIND | MS_REC)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--mem", type=int, default=256, help="MiB (default 256)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="default: uname -r")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        status, output, timings = run_in_libkrun(command or ["uname", "-r"], args.cpus, args.mem)
    except PeerUnavailable as exc:
        print(f"libkrun peer unavailable: {exc.reason}", file=sys.stderr)
        return SKIPPED
    if args.json:
        print(json.dumps({"status": status, "output": output, **timings}))
    else:
        sys.stdout.write(output if output.endswith("\n") or not output else output + "\n")
        print(
            f"libkrun: status {status}; "
            + ", ".join(f"{name[:-2]} {value:.2f} s" for name, value in timings.items())
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
