"""`vmrun validate FILE...` answers for every file, whatever happens with one of them, in
both formats; and a mistyped command is named as one, with the command it resembles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner import cli
from runner.config import load as load_module

ROOT = Path(__file__).resolve().parents[2]
DEV = str(ROOT / "configs" / "dev.toml")


def test_json_lists_every_file_with_a_huge_integer_among_them(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text('{"machine": {"vcpu_count": ' + "9" * 5000 + "}}")
    missing = tmp_path / "missing.toml"
    result = subprocess.run(
        [sys.executable, "-m", "runner", "validate", "--format", "json", str(big), DEV,
         str(missing)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == ""
    assert json.loads(result.stdout) == [
        {
            "file": str(big),
            "line": 1,
            "column": 14,
            "path": "machine.vcpu_count",
            "message": "must be at most 32, got 999999999999...(5000 digits)",
        },
        {
            "file": str(missing),
            "line": 1,
            "column": 1,
            "path": "(document)",
            "message": "cannot read the file: No such file or directory",
        },
    ]


@pytest.fixture
def a_bug_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """`load` with a vmrun bug for the file named `bug.toml`, and its real self for others."""
    monkeypatch.setenv("VMRUN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VMRUN_DEBUG", raising=False)
    real = load_module.load

    def load(path: str):  # type: ignore[no-untyped-def]
        if path.endswith("bug.toml"):
            raise ZeroDivisionError("a bug")
        return real(path)

    monkeypatch.setattr("runner.config.load.load", load)
    bad = tmp_path / "bad.toml"
    bad.write_text("[machine]\nvcpu_count = 0\n")
    return str(tmp_path / "bug.toml"), str(bad)


def test_json_has_an_outcome_for_a_file_vmrun_fails_on(
    a_bug_for: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    bug, bad = a_bug_for
    assert cli.main(["validate", "--format", "json", bug, DEV, bad]) == 1
    records = json.loads(capsys.readouterr().out)
    assert [(r["file"], r["path"]) for r in records] == [
        (bug, "(document)"),
        (bad, "machine.vcpu_count"),
    ]
    assert records[0]["message"].startswith("internal error (a vmrun bug): ZeroDivisionError: ")
    assert "its traceback is in " in records[0]["message"]


def test_text_goes_on_after_a_file_vmrun_fails_on(
    a_bug_for: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    bug, bad = a_bug_for
    assert cli.main(["validate", bug, bad]) == 1
    said = capsys.readouterr()
    assert said.out == f"{bad}:2:1: machine.vcpu_count: must be at least 1, got 0\n"
    assert said.err.startswith(f"vmrun: {bug}: internal error (a vmrun bug): ZeroDivisionError")
    assert said.err.endswith("\n1 of 2 file(s) invalid\n")


@pytest.mark.parametrize(
    ("word", "suggestion"),
    [("valdate", "validate"), ("vaildate", "validate"), ("shwo", "show"), ("shema", "schema"),
     ("rnu", "run"), ("frobnicate", None)],
)  # fmt: skip
def test_a_mistyped_command_is_named(
    capsys: pytest.CaptureFixture[str], word: str, suggestion: str | None
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([word, DEV])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"vmrun: error: `{word}` is neither a command nor a VM file (.toml, .json); " in err
    assert (f"did you mean `{suggestion}`?" in err) == (suggestion is not None)
    assert "commands: validate, schema, show, run, emulated-host" in err
    assert "unrecognized arguments" not in err


def test_a_vm_file_is_still_run_without_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    # `vmrun FILE` is `vmrun run FILE`: a missing .toml is a file that cannot be read.
    assert cli.main(["missing-vm.toml"]) == 125
    assert "missing-vm.toml:1:1: (document): cannot read the file" in capsys.readouterr().err
