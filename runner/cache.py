"""vmrun's cache directory: downloaded packages, kernels and built images, keyed by content.

Other users must not be able to plant anything there: vmrun unpacks, builds and (busybox,
once verified) runs what it finds. So the cache's root must belong to the user and be
writable by nobody else (a new one is made 0700), and files are written whole through a
private temporary name and a rename, never through a predictable path that could already
be a symbolic link.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from runner.errors import VmrunError
from runner.host_kvm import INSIDE_ENV

_checked: set[str] = set()


class CacheError(VmrunError):
    """A cache directory that vmrun will not trust."""


def cache_root() -> Path:
    """$VMRUN_CACHE, else $XDG_CACHE_HOME/vmrun, else ~/.cache/vmrun."""
    return Path(
        os.environ.get("VMRUN_CACHE")
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vmrun")
    )


def cache_dir(*parts: str) -> Path:
    """A directory in the cache (created on demand, 0700), after the root is checked."""
    root = cache_root()
    _check_root(root)
    path = Path(root, *parts)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _check_root(root: Path) -> None:
    key = str(root)
    if key in _checked:
        return
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.stat()
    fix = "set VMRUN_CACHE to a directory of your own"
    if not stat.S_ISDIR(info.st_mode):
        raise CacheError(f"vmrun's cache {root} is not a directory; {fix}")
    # Inside the emulated host every file shows the outside's owner while the job runs as
    # root there; the vmrun outside checked this root before it shared it.
    if info.st_uid != os.geteuid() and not os.environ.get(INSIDE_ENV):
        raise CacheError(f"vmrun's cache {root} belongs to another user (uid {info.st_uid}); {fix}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(
            f"vmrun's cache {root} is writable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): `chmod go-w {root}`, or {fix}"
        )
    _checked.add(key)


def write_atomically(path: Path, data: bytes) -> None:
    """`path` holds `data`, whole or not at all: written to a private temporary file beside
    it (mkstemp: a fresh name, O_EXCL, mode 0600) and renamed over it."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise


def keep_newest(paths: Iterable[Path], kept: int) -> None:
    """Remove all but the `kept` of `paths` changed (or marked used, `os.utime`) last."""

    def age(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except OSError:  # another vmrun removed it meanwhile
            return 0

    for old in sorted(paths, key=age)[:-kept]:
        old.unlink(missing_ok=True)
