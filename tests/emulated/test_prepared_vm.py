"""The VM handed to the vmrun inside the emulated host: every field comes through, and
nothing but the model's classes can be named by the file."""

from __future__ import annotations

import os
import pickle
import stat
import sys
from pathlib import Path

import pytest

from runner.config.load import load
from runner.emulated import prepared_vm
from runner.emulated.prepared_vm import PreparedVmError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_every_field import SAMPLES, load_sample, sample_dir  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", SAMPLES)
def test_every_field_comes_through(name: str, sample_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    resources = load_sample(name, sample_dir)
    directory = tmp_path / "prepared"
    directory.mkdir()
    path = prepared_vm.write(resources, str(directory))
    assert prepared_vm.read(path) == resources
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_the_examples_come_through(tmp_path: Path) -> None:
    for index, file in enumerate(sorted((ROOT / "configs").rglob("*.toml"))):
        vm = load(str(file))
        directory = tmp_path / str(index)
        directory.mkdir()
        assert prepared_vm.read(prepared_vm.write(vm.resources, str(directory))) == vm.resources


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch ran",))


@pytest.mark.parametrize(
    "payload",
    [_RunsCode(), Path("/etc"), {"a": [1, 2]}],
    ids=["a call of os.system", "another class", "not a VM"],
)
def test_only_the_model_is_read(
    payload: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "vm.pickle"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(PreparedVmError) as raised:
        prepared_vm.read(str(path))
    assert not (tmp_path / "ran").exists()
    assert "not vmrun's model" in str(raised.value) or "not a VM" in str(raised.value)


def test_a_damaged_file_is_an_error(tmp_path: Path) -> None:
    vm = load(str(ROOT / "configs" / "dev.toml"))
    path = Path(prepared_vm.write(vm.resources, str(tmp_path)))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(PreparedVmError, match="not a VM prepared by vmrun"):
        prepared_vm.read(str(path))


def test_an_existing_file_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / prepared_vm.FILE_NAME).write_text("someone else's")
    vm = load(str(ROOT / "configs" / "dev.toml"))
    with pytest.raises(FileExistsError):
        prepared_vm.write(vm.resources, str(tmp_path))
