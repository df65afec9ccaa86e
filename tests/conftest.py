"""Shared fixtures: VM files written to a test's own temporary directory."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

WriteVm = Callable[..., str]


@pytest.fixture
def write_vm(tmp_path: Path) -> WriteVm:
    """`write_vm(text, suffix=".toml", name="vm")` writes `text` (dedented) beside the test's
    other files and returns the file's path as a string, as `load` takes it."""

    def write(text: str, suffix: str = ".toml", name: str = "vm") -> str:
        path = tmp_path / f"{name}{suffix}"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return str(path)

    return write
