"""The emulated host's image with the waiting vmrun inside (runner/emulated/waiting_inside.py).

That vmrun starts before the host mounts anything, so its files go into the host's
initramfs: the interpreter with its loader and libraries, and every module that importing
`PRELOADED` loads (each extension with its libraries, as `ldd` resolves them), at their
paths on this host, so that the same module path finds them there, and after `chroot /host`
the host's own. Modules go in with a compiled copy that Python takes without checking the
source (PEP 552's unchecked hash): the archive's times are zero.

Which files: a Python started as the inside is, importing `PRELOADED`, lists them. The list
is kept in the cache, and each run checks the files it names (path, size, mtime) against the
image's key: a module changed, added to or dropped from the imports changes a file listed
(the module that imports it), and the image is built again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import py_compile
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from runner import progress
from runner.boot.initramfs import Entry, cpio
from runner.cache import keep_newest, write_atomically
from runner.emulated import guest_programs, waiting_inside
from runner.emulated.image import HostImage
from runner.emulated.waiting_inside import PRELOADED
from runner.errors import VmrunError

LAYOUT = "inside-bundle 2"
START = "/vmrun-inside/start"  # in the initramfs: the init starts the waiting inside with it
KEPT = 2  # images kept per host image (each is its initramfs and about 35 MB more)

# Run as the inside runs: what it imports, and every file mapped into it.
LISTER = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
files = {m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
with open("/proc/self/maps") as maps:
    for line in maps:
        path = line.split()[-1]
        if path.startswith("/") and not path.startswith("/dev/"):
            files.add(path)
print(json.dumps(sorted(files)))
"""


class InsideBundleError(VmrunError):
    """The waiting inside's files cannot be gathered; the run goes on without it."""


def with_waiting_inside(image: HostImage, module_path: str) -> HostImage:
    """`image`, its initramfs extended with the waiting inside's files (built once into the
    cache, beside the image)."""
    interpreter = os.path.realpath(sys.executable)
    listing = image.initramfs.parent / f"inside-{_digest(interpreter, module_path)}.files"
    try:
        files = json.loads(listing.read_text())
    except (OSError, ValueError):
        files = None
    target = _target(image, interpreter, module_path, files) if files else None
    if target is None or not target.exists():
        progress.slow("packing the vmrun inside into the emulated KVM host's image")
        files = _listed(interpreter, module_path)
        write_atomically(listing, json.dumps(files).encode())
        target = _target(image, interpreter, module_path, files)
        if target is None:
            raise InsideBundleError("a file the inside loads vanished while it was listed")
        base = image.initramfs.read_bytes()
        bundle = cpio(_entries(interpreter, module_path, files))
        write_atomically(target, base + bytes(-len(base) % 4) + bundle)
        keep_newest(image.initramfs.parent.glob("initramfs-inside-*.img"), KEPT)
    return HostImage(image.kernel, target)


def start_script(interpreter: str, module_path: str) -> str:
    return (
        "#!/bin/sh\n"
        f"export PYTHONPATH={shlex.quote(module_path)}\n"
        f"exec {shlex.quote(interpreter)} -S -P -m runner.emulated.waiting_inside\n"
    )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _target(image: HostImage, interpreter: str, module_path: str, files: list[str]) -> Path | None:
    """The image's path, keyed by what it holds; None if a listed file is gone."""
    lines = [LAYOUT, str(image.initramfs), interpreter, module_path]
    try:
        for path in files:
            info = os.stat(path)
            lines.append(f"{path}\t{info.st_size}\t{info.st_mtime_ns}")
    except OSError:
        return None
    return image.initramfs.parent / f"initramfs-inside-{_digest(*lines)}.img"


def _listed(interpreter: str, module_path: str) -> list[str]:
    env = {"PYTHONPATH": module_path, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run(
        [interpreter, "-S", "-P", "-c", LISTER, waiting_inside.__name__, *PRELOADED],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        check=False,
    )
    if result.returncode != 0:
        raise InsideBundleError(f"cannot list the inside's files: {result.stderr.strip()[-300:]}")
    files: set[str] = {interpreter}
    for path in json.loads(result.stdout):
        files.add(path)
        if path.endswith(".so") or ".so." in path:
            files.update(guest_programs.shared_objects(Path(path)))
    files.update(guest_programs.shared_objects(Path(interpreter)))
    return sorted(files)


def _entries(interpreter: str, module_path: str, files: list[str]) -> list[Entry]:
    """Each file at its path, each module's compiled copy beside it, and the start script."""
    contents = {path: path for path in files}
    compiled: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for path in files:
            if path.endswith(".py"):
                cached = importlib.util.cache_from_source(path)
                out = os.path.join(scratch, "module.pyc")
                py_compile.compile(
                    path,
                    cfile=out,
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                )
                compiled[cached] = Path(out).read_bytes()
    entries = guest_programs.archive_entries(contents, {})
    dirs = {str(Path(path).parent) for path in compiled} - {e.name for e in entries}
    entries += [Entry.directory(d) for d in sorted(dirs)]
    entries += [Entry.file(path, data) for path, data in sorted(compiled.items())]
    entries += [Entry.directory(os.path.dirname(START))]
    entries.append(Entry.file(START, start_script(interpreter, module_path).encode(), 0o755))
    return entries
