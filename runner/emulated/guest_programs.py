"""Host programs for a guest (mke2fs, e2fsck, fio), packed with their shared libraries into
an initramfs, for boot tests and benchmarks.

The default guest has vmrun's init and busybox; a VM file adds an archive of its own with
`[kernel] initramfs`, which the guest unpacks before vmrun's base (runner/guest/initramfs.py).
This module finds each program on this host (PATH, then /usr/sbin and /sbin), the dynamic
loader and the shared libraries it needs as this host's loader resolves them (`ldd`, run
on these trusted host binaries: it follows DT_NEEDED, RUNPATH and PT_INTERP recursively),
and writes them at their host paths into a newc archive, in the cache under a key of those
files' identities. The guest's loader, with no ld.so.cache, searches the same multiarch
directories, and RUNPATHs name the same absolute paths, so the set that runs here under
`chroot` runs there. (tests/boot/guest_program.py builds a static program from source
instead, for code that no host program has.)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import attrs

from runner.boot.initramfs import Entry, compressed, cpio
from runner.cache import cache_dir, write_atomically
from runner.errors import VmrunError

# Where system programs are when PATH leaves them out (a user's PATH often has no sbin).
SYSTEM_DIRS = ("/usr/sbin", "/sbin")
# The Debian package of each program, for the message when it is missing.
PACKAGES = {"mke2fs": "e2fsprogs", "e2fsck": "e2fsprogs", "fio": "fio"}
# Other names a program answers to (as its package installs them, beside it).
ALIASES = {"mke2fs": ("mkfs.ext4",), "e2fsck": ("fsck.ext4",)}
# What changes how archives are laid out: a new value is a new cache key.
LAYOUT = "guest-programs 1"
_LDD_PATH = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)$")
_LDD_MISSING = re.compile(r"^\s*(\S+)\s+=>\s+not found")


class GuestProgramError(VmrunError):
    """A host program that cannot be packed for the guest; the message says why."""


@attrs.frozen
class GuestPrograms:
    archive: Path  # the cached archive (a newc cpio, gzip-compressed if asked)
    paths: Mapping[str, str]  # each program's path in the guest, by its name


def host_program(name: str) -> Path:
    """Where `name` is on this host: the first in PATH, else in /usr/sbin or /sbin."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SYSTEM_DIRS))
    if found is None:
        package = PACKAGES.get(name, name)
        raise GuestProgramError(
            f"`{name}` is not on this host (looked in PATH, {' and '.join(SYSTEM_DIRS)}): "
            f"install it (Debian: `apt-get install {package}`)"
        )
    return Path(os.path.abspath(found))


def shared_objects(program: Path) -> list[str]:
    """The loader and every shared library `program` needs, recursively, at the paths this
    host's loader finds them (none for a static program)."""
    if shutil.which("ldd") is None:
        raise GuestProgramError("`ldd` is needed to find a program's libraries (Debian: libc-bin)")
    result = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=False)
    text = result.stdout + result.stderr
    if result.returncode != 0:
        if "not a dynamic executable" in text:
            return []
        raise GuestProgramError(f"`ldd {program}` failed: {text.strip()[-500:]}")
    missing = [m.group(1) for line in text.splitlines() if (m := _LDD_MISSING.match(line))]
    if missing:
        raise GuestProgramError(f"{program} needs libraries this host lacks: {', '.join(missing)}")
    # Lines without a path (linux-vdso.so.1) are the kernel's, not files.
    return [m.group(1) for line in text.splitlines() if (m := _LDD_PATH.match(line))]


def _files(names: Sequence[str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(program name -> guest path, guest path -> host path, alias path -> symlink target)."""
    programs: dict[str, str] = {}
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    for name in names:
        if not name or "/" in name:
            raise GuestProgramError(f"{name!r} is not a program's name (searched for in PATH)")
        program = host_program(name)
        programs[name] = str(program)
        files[str(program)] = str(program)
        for library in shared_objects(program):
            files.setdefault(library, library)
        for alias in ALIASES.get(name, ()):
            links[str(program.parent / alias)] = program.name
    return programs, files, links


def _identity(files: Mapping[str, str], links: Mapping[str, str], compress: bool) -> str:
    """What the archive holds, by the path, size and mtime of each file behind it (no inode
    numbers: inside the emulated host the same files show others, over 9p)."""
    lines = [LAYOUT, f"gzip {compress}"]
    for guest, host in sorted(files.items()):
        real = os.path.realpath(host)
        info = os.stat(real)
        lines.append(f"{guest}\t{real}\t{info.st_size}\t{info.st_mtime_ns}")
    lines += [f"{alias} -> {target}" for alias, target in sorted(links.items())]
    return "\n".join(lines) + "\n"


def archive_entries(files: Mapping[str, str], links: Mapping[str, str]) -> list[Entry]:
    """Directories first (parents before children), then the files and the aliases."""
    paths = [*files, *links]
    dirs = sorted({str(parent) for p in paths for parent in PurePosixPath(p).parents} - {"/"})
    entries = [Entry.directory(d) for d in dirs]
    for guest, host in sorted(files.items()):
        real = os.path.realpath(host)
        mode = stat.S_IMODE(os.stat(real).st_mode) & 0o755
        entries.append(Entry.file(guest, Path(real).read_bytes(), mode))
    entries += [Entry.symlink(alias, target) for alias, target in sorted(links.items())]
    return entries


def guest_programs(names: Sequence[str], *, compress: bool = False) -> GuestPrograms:
    """The archive of the programs `names` with what they need to run, built into the cache
    unless the same files are there already. Uncompressed by default: the guest copies a
    cpio faster than it inflates one, under emulation most of all."""
    if not names:
        raise GuestProgramError("no programs to pack for the guest")
    programs, files, links = _files(names)
    identity = _identity(files, links, compress)
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    suffix = ".cpio.gz" if compress else ".cpio"
    target = cache_dir("guest-programs") / f"{'-'.join(sorted(set(names)))}-{key}{suffix}"
    if not target.exists():
        archive = cpio(archive_entries(files, links))
        try:
            write_atomically(target, compressed(archive) if compress else archive)
        except OSError as exc:
            raise GuestProgramError(f"cannot write {target}: {exc}") from exc
    return GuestPrograms(target, programs)
