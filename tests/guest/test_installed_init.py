"""Which guest init a run uses: the one `pip install` compiled, unless its sources moved on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from runner.guest import initramfs


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake install directory and an empty cache."""
    package = tmp_path / "package"
    package.mkdir()
    monkeypatch.setattr(initramfs, "INSTALLED_INIT", package / "init.digest")
    monkeypatch.setenv("VMRUN_CACHE", str(tmp_path / "cache"))
    return package


def test_the_install_builds_the_init_with_its_digest() -> None:
    # This checkout was installed (README: pip install -e): setup.py compiled the init.
    init = initramfs.INSTALLED_INIT.parent / "init"
    assert init.exists() and os.access(init, os.X_OK)
    assert init.read_bytes()[:4] == b"\x7fELF"
    assert initramfs.INSTALLED_INIT.read_text().strip()


def test_an_init_built_from_these_sources_is_used_as_installed(installed: Path) -> None:
    digest = initramfs._init_build_module().source_digest()
    (installed / "init").write_bytes(b"installed init")
    (installed / "init.digest").write_text(digest + "\n")
    assert initramfs.guest_init() == installed / "init"


def test_changed_sources_build_a_new_init_into_the_cache(installed: Path, tmp_path: Path) -> None:
    if shutil.which(os.environ.get("CC", "gcc")) is None:
        pytest.skip("no C compiler to build the init with")
    (installed / "init").write_bytes(b"stale init")
    os.utime(installed / "init", ns=(0, 0))  # older than the sources: they moved on
    (installed / "init.digest").write_text("0" * 64 + "\n")
    built = initramfs.guest_init()
    assert built.is_relative_to(tmp_path / "cache")
    assert built.read_bytes()[:4] == b"\x7fELF"
    assert initramfs.guest_init() == built  # once per source content


def test_a_wheel_without_sources_uses_its_init(
    installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(initramfs, "NATIVE_INIT", tmp_path / "no-sources")
    (installed / "init").write_bytes(b"installed init")
    assert initramfs.guest_init() == installed / "init"


def test_a_wheel_without_its_init_says_to_reinstall(
    installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(initramfs, "NATIVE_INIT", tmp_path / "no-sources")
    with pytest.raises(initramfs.GuestImageError, match=r"missing .* reinstall vmrun"):
        initramfs.guest_init()


def test_an_init_newer_than_its_sources_is_used_without_hashing_them(
    installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The usual run: no OpenSSL loaded into the VMM to prove what the mtimes already say.
    (installed / "init").write_bytes(b"installed init")
    (installed / "init.digest").write_text("recorded at install\n")
    build = initramfs._init_build_module()
    monkeypatch.setattr(initramfs, "_init_build_module", lambda: build)
    monkeypatch.setattr(build, "source_digest", lambda: pytest.fail("sources hashed"))
    assert initramfs.guest_init() == installed / "init"
