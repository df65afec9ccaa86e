"""What tests expect of `load`: the problems it reports, its lines, or a clean load."""

from __future__ import annotations

import pytest

from runner.config.load import VmFile, load
from runner.config.problems import ConfigError, format_key_path


def problems(path: str) -> list[tuple[str, str]]:
    """(key path, message) of every problem `load` reports, in its order."""
    with pytest.raises(ConfigError) as info:
        load(path)
    return [(format_key_path(p.path), p.message) for p in info.value.problems]


def lines(path: str) -> list[str]:
    """The `FILE:LINE:COL: key.path: message` lines of the problems `load` reports."""
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.lines()


def passes(path: str) -> VmFile:
    try:
        return load(path)
    except ConfigError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail("\n".join(exc.lines()))
