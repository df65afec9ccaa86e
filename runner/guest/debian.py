"""Debian packages as data: download a .deb into the cache (with a progress bar and its
SHA256 checked) and unpack it, without installing anything on the host.

apt itself says where a package is and what its checksum is (`apt-get download
--print-uris`); vmrun only downloads and unpacks, so it works as any user on Debian and
Ubuntu hosts and never changes the host's package state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from runner import progress
from runner.cache import cache_dir, write_atomically
from runner.errors import VmrunError


class PackageError(VmrunError):
    """A package that cannot be had; the message says what to do instead."""


# Set where vmrun must not use the network (the emulated host, which has none, sets it): a
# package missing from the cache is then an error that says how to get it, not a download
# that fails with a name-resolution error.
OFFLINE_ENV = "VMRUN_OFFLINE"


_URI_LINE = re.compile(
    r"^'(?P<url>[^']+)' (?P<file>\S+) (?P<size>\d+) SHA256:(?P<sha>[0-9a-f]{64})"
)


def _apt(*args: str) -> str:
    if shutil.which(args[0]) is None:
        raise PackageError(
            f"`{args[0]}` is not available: vmrun fetches Debian packages with apt "
            "(Debian and Ubuntu hosts); or set kernel.path in the VM file to a kernel image "
            "you have"
        )
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise PackageError(f"`{' '.join(args)}` failed: {detail[0]}; is `apt-get update` done?")
    return result.stdout


def depends_of(package: str) -> str:
    """The package a metapackage stands for (`linux-image-amd64` -> `linux-image-6.1.0-N-amd64`),
    as recorded when it was first resolved (apt takes seconds under emulation)."""
    record = cache_dir("debs") / f"{package}.depends"
    if record.exists():
        return record.read_text().strip()
    target = _depends_from_apt(package)
    write_atomically(record, (target + "\n").encode())
    return target


def _depends_from_apt(package: str) -> str:
    for line in _apt("apt-cache", "depends", package).splitlines():
        line = line.strip()
        if line.startswith("Depends:"):
            return line.split(":", 1)[1].strip()
    raise PackageError(f"{package} has no dependency to follow")


def fetch(package: str) -> Path:
    """The .deb of `package` in the cache, downloaded first if needed (checksum verified).

    What was fetched is recorded beside it (`PACKAGE.json`: file, size, SHA256), and later
    calls use the record without asking apt; delete the record to fetch a newer version."""
    record = cache_dir("debs") / f"{package}.json"
    known = _record(record)
    if known is not None:
        path = record.parent / known["file"]
        if _unchanged(path, known):
            return path
    path, size, sha256 = _fetch_from_apt(package)
    _remember(record, path, size, sha256)
    return path


def verified(package: str) -> Path:
    """`fetch(package)`, its SHA256 checked again now: for a .deb something is run from."""
    path = fetch(package)
    known = _record(cache_dir("debs") / f"{package}.json")
    if known is None or _sha256(path) != known["sha256"]:
        raise PackageError(f"{path} is not the package apt described (SHA256 differs)")
    return path


def _record(record: Path) -> dict | None:
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    fields = {"file": str, "size": int, "sha256": str, "stat": list}
    if not isinstance(known, dict) or not all(
        isinstance(known.get(k), t) for k, t in fields.items()
    ):
        return None  # an older record (no stat) or a damaged one: ask apt again
    if "/" in known["file"] or known["file"].startswith("."):
        return None
    return known


def _stat_key(path: Path) -> list[int]:
    # Not the inode: the emulated host's 9p share renumbers inodes (multidevs=remap).
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def _unchanged(path: Path, known: dict) -> bool:
    """Whether the .deb is the one whose SHA256 was checked: the same size and mtime as then
    (a file that changed is hashed again, and fetched again if it differs)."""
    try:
        if _stat_key(path) == known["stat"]:
            return True
        return path.stat().st_size == known["size"] and _sha256(path) == known["sha256"]
    except OSError:
        return False


def _remember(record: Path, path: Path, size: int, sha256: str) -> None:
    known = {"file": path.name, "size": size, "sha256": sha256, "stat": _stat_key(path)}
    write_atomically(record, (json.dumps(known) + "\n").encode())


def _fetch_from_apt(package: str) -> tuple[Path, int, str]:
    found = None
    for line in _apt("apt-get", "download", "--print-uris", package).splitlines():
        found = _URI_LINE.match(line)
        if found:
            break
    if found is None:
        raise PackageError(f"apt does not know where to download {package} from")
    target = cache_dir("debs") / found["file"]
    size, sha256 = int(found["size"]), found["sha"]
    if not (target.exists() and _sha256(target) == sha256):
        _download(found["url"], target, size, sha256, package)
    return target, size, sha256


def _download(url: str, target: Path, size: int, sha256: str, label: str) -> None:
    if os.environ.get(OFFLINE_ENV):
        raise PackageError(
            f"{label} is not in vmrun's cache ({target.parent}), and there is no network here "
            f"({OFFLINE_ENV} is set, as inside the emulated host): run `vmrun run` outside the "
            "emulated host, which provisions what a VM needs before it enters, or set "
            "kernel.path in the VM file to a kernel you have"
        )
    progress.slow(f"downloading {label} ({size / 1e6:.1f} MB) into {target.parent}")
    # Only when something is downloaded: a run from the cache is spared their import (and
    # hashlib's OpenSSL, megabytes of the VMM's memory).
    import hashlib
    import urllib.request

    from tqdm import tqdm

    digest = hashlib.sha256()
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=60) as response,
            tqdm(total=size, unit="B", unit_scale=True, desc=label, file=sys.stderr) as bar,
        ):
            while chunk := response.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise PackageError(f"{label}: the download's SHA256 differs from apt's; not used")
        os.replace(partial, target)
    except OSError as exc:
        raise PackageError(f"cannot download {label} from {url}: {exc}") from exc
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _sha256(path: Path) -> str:
    import hashlib  # see _download

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def unpack(deb: Path) -> Path:
    """The files of `deb`, unpacked once into the cache (`dpkg-deb -x`)."""
    target = cache_dir("unpacked") / deb.stem
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    unpack_into(deb, target)
    (target / ".complete").touch()
    return target


def unpack_into(deb: Path, target: Path) -> Path:
    """The files of `deb` unpacked into `target` (`dpkg-deb -x`)."""
    if shutil.which("dpkg-deb") is None:
        raise PackageError("`dpkg-deb` is not available (install the dpkg package)")
    result = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(target)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise PackageError(f"cannot unpack {deb.name}: {result.stderr.strip()}")
    return target
