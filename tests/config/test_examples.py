"""The VM files under configs/: each one validates, survives `unstructure` and a reload in
both formats, works through the CLI, and together the examples use every part of the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomli_w

from runner import cli
from runner.config import devices, model
from runner.config.convert import unstructure
from runner.config.load import load
from runner.config.paths import host_paths
from runner.config.problems import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
EXAMPLES_DIR = CONFIGS / "examples"
SCHEMA = ROOT / "schemas" / "vmrun.schema.json"

FILES = sorted(p for p in CONFIGS.rglob("*") if p.suffix in (".toml", ".json") and p.is_file())
EXAMPLES = [p for p in FILES if EXAMPLES_DIR in p.parents]


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


each_file = pytest.mark.parametrize("path", FILES, ids=_id)
each_example = pytest.mark.parametrize("path", EXAMPLES, ids=_id)

# Top-level sections that no example sets, and why. Keep this list short: an entry here is
# a part of the model that nothing checks against a realistic file.
NOT_COVERED = {
    # An input backend reads a host evdev device (/dev/input/eventN), which must exist for
    # the file to validate; hosts without input hardware (CI machines, containers) have
    # none, and a committed stand-in file would not be an evdev device.
    "input_backends": devices.InputBackend,
    # Firmware is a real image (an EFI build, qboot) that would have to be committed here.
    "firmware": model.FirmwareConfig,
}


def _load(path: Path | str) -> model.VmResources:
    try:
        return load(str(path)).resources
    except ConfigError as error:
        pytest.fail("\n".join(error.lines()))


def test_files_are_found() -> None:
    assert CONFIGS / "dev.toml" in FILES
    assert len(EXAMPLES) >= 9


@each_file
def test_file_validates(path: Path) -> None:
    _load(path)


@each_example
def test_example_names_the_schema(path: Path) -> None:
    text = path.read_text()
    if path.suffix == ".toml":
        first = text.splitlines()[0]
        assert first.startswith("#:schema "), "a TOML example starts with its #:schema line"
        reference = first.removeprefix("#:schema ").strip()
        assert text.splitlines()[1].startswith("# "), "then a comment says what it shows"
    else:
        reference = json.loads(text)["$schema"]
    assert (path.parent / reference).resolve() == SCHEMA


@each_file
@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_round_trip(path: Path, fmt: str, tmp_path: Path) -> None:
    first = _load(path)
    # Host paths are absolute after loading, so the copy resolves them to the same files.
    assert all(os.path.isabs(value) for _, _, value in host_paths(first))
    document = unstructure(first)
    copy = tmp_path / f"copy.{fmt}"
    if fmt == "toml":
        copy.write_text(tomli_w.dumps(document))
    else:
        copy.write_text(json.dumps(document, indent=2))
    assert _load(copy) == first


def test_cli_validate_accepts_every_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", *map(str, FILES)]) == 0
    assert capsys.readouterr().out == ""


def test_console_script_validate_accepts_every_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runner", "validate", "--format", "json", *map(str, FILES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("path", [CONFIGS / "dev.toml", *EXAMPLES], ids=_id)
@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_cli_show_reloads_to_the_same_vm(
    path: Path, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["show", str(path), "--format", fmt]) == 0
    shown = tmp_path / f"shown.{fmt}"
    shown.write_text(capsys.readouterr().out)
    assert _load(shown) == _load(path)


def _default(field: attrs.Attribute) -> Any:
    if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
        return field.default.factory()
    return field.default


def test_every_section_is_used_by_an_example() -> None:
    loaded = [_load(path) for path in EXAMPLES]
    unused = {
        field.name
        for field in attrs.fields(model.VmResources)
        if all(getattr(resources, field.name) == _default(field) for resources in loaded)
    }
    # Equal, not a subset: a section an example starts to use leaves NOT_COVERED.
    assert unused == set(NOT_COVERED)


def _model_classes(tp: Any, found: set[type]) -> set[type]:
    """Every attrs class reachable from the type `tp` (through unions, tuples, dicts)."""
    if attrs.has(tp):
        if tp not in found:
            found.add(tp)
            for hint in typing.get_type_hints(tp).values():
                _model_classes(hint, found)
    elif typing.get_origin(tp) in (typing.Union, types.UnionType, tuple, dict):
        for arg in typing.get_args(tp):
            _model_classes(arg, found)
    return found


def _instances(obj: Any, found: set[type]) -> set[type]:
    """The attrs classes of `obj` and of everything in it."""
    if attrs.has(type(obj)):
        found.add(type(obj))
        for field in attrs.fields(type(obj)):
            _instances(getattr(obj, field.name), found)
    elif isinstance(obj, tuple | list):
        for item in obj:
            _instances(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _instances(item, found)
    return found


def test_every_kind_is_used_by_an_example() -> None:
    """Each class of the model (each backend, console, port and root kind) appears."""
    used: set[type] = set()
    for path in EXAMPLES:
        _instances(_load(path), used)
    missing = _model_classes(model.VmResources, set()) - used
    assert {cls.__name__ for cls in missing} == {cls.__name__ for cls in NOT_COVERED.values()}
