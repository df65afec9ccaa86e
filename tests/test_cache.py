"""The cache is the user's alone, and what is written there is written whole."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runner import cache
from runner.cache import CacheError, cache_dir, write_atomically


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cache, "_checked", set())
    monkeypatch.delenv(cache.INSIDE_ENV, raising=False)
    monkeypatch.setenv("VMRUN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_new_cache_is_private(root: Path) -> None:
    path = cache_dir("debs")
    assert path == root / "debs"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_a_cache_others_can_write_is_refused(root: Path) -> None:
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(CacheError) as info:
        cache_dir("debs")
    assert str(info.value) == (
        f"vmrun's cache {root} is writable by other users (mode 0777): `chmod go-w {root}`, "
        "or set VMRUN_CACHE to a directory of your own"
    )
    assert not (root / "debs").exists()


def test_a_cache_of_another_user_is_refused(root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with pytest.raises(CacheError, match=r"belongs to another user \(uid 65534\)"):
        cache_dir()


def test_inside_the_emulated_host_the_owner_was_checked_outside(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    monkeypatch.setenv(cache.INSIDE_ENV, "1")
    assert cache_dir() == root


def test_writes_replace_a_planted_symbolic_link_and_never_follow_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    target = tmp_path / "base.cpio.gz"
    target.symlink_to(victim)
    write_atomically(target, b"built")
    assert victim.read_bytes() == b"keep"
    assert not target.is_symlink() and target.read_bytes() == b"built"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.cpio.gz", "victim"]
