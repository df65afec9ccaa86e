"""What the tests that boot the emulated host share."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.emulated.host import qemu_missing
from runner.emulated.image import HostImage


@pytest.fixture
def qemu_present() -> None:
    """Skip without QEMU, except under CI, which must test the emulated host."""
    reason = qemu_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the emulated host: {reason}")
        pytest.skip(reason)


@pytest.fixture
def own_copy(
    tmp_path: Path, qemu_present: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[HostImage], HostImage]]:
    """Copies a host image where only this test's saved states go (runner/emulated/snapshot.py
    keeps them beside it), removed after the test: they are hundreds of MB. The test runs in
    its own directory, the current one, which `vmrun emulated-host` shares."""
    directory = tmp_path / "images" / "image"

    def copy(image: HostImage) -> HostImage:
        directory.mkdir(parents=True)
        for path in (image.kernel, image.initramfs):
            shutil.copyfile(path, directory / path.name)
        return HostImage(directory / image.kernel.name, directory / image.initramfs.name)

    monkeypatch.chdir(tmp_path)
    yield copy
    shutil.rmtree(directory, ignore_errors=True)
