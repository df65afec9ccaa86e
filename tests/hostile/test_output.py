"""What vmrun prints about a hostile file is safe to print: every control character, bidi
control and line separator that the file (or its name) holds is escaped, so one problem is
one line and nothing repaints a terminal or a CI log; and `vmrun show` prints a file that
loads again, to the same VM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import cli
from runner.config.convert import unstructure
from runner.config.load import load
from runner.errors import VmrunError

# Keys and values a pull request could write: ESC sequences, a forged second line, a carriage
# return, a bell, C1 CSI, bidi overrides and isolates, line and paragraph separators, DEL.
NASTY = "\x1b[2J\nfake.toml:1:1: ok\r\x07\x9b31m\u202e\u2066\u2028\u2029\x7f"
NASTY_TOML = json.dumps(NASTY)  # a JSON string is a TOML basic string here: \uXXXX escapes


def printed_safely(text: str) -> bool:
    return all(line.isprintable() for line in text.splitlines())


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_validate_escapes_what_the_file_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    vm = tmp_path / "vm.toml"
    vm.write_text(
        f"{NASTY_TOML} = 1\n[workload]\nexec = 'x'\nhostname = {NASTY_TOML}\n"
        f"[kernel]\npath = {NASTY_TOML}\n"
    )
    assert cli.main(["validate", "--format", fmt, str(vm)]) == 1
    out = capsys.readouterr().out
    assert printed_safely(out)
    if fmt == "text":
        assert len(out.splitlines()) == 2  # the unknown key and the host name: one line each
        assert out.startswith(f"{vm}:1:1: \\x1b[2J\\nfake.toml:1:1: ok\\r\\x07\\x9b31m\\u202e")
    else:
        records = json.loads(out)
        assert [r["path"][:9] for r in records] == ["\\x1b[2J\\n", "workload."]
        assert all(r["message"].isprintable() for r in records)


def test_a_file_name_is_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "a\nb\x1b[31m\u202e"
    directory.mkdir()
    vm = directory / "vm.toml"
    vm.write_text("[machine]\nvcpu_count = 0\n")
    assert cli.main(["validate", str(vm)]) == 1
    out = capsys.readouterr().out
    shown = f"{tmp_path}/a\\nb\\x1b[31m\\u202e/vm.toml"
    assert out == f"{shown}:2:1: machine.vcpu_count: must be at least 1, got 0\n"


def test_a_vmrun_message_is_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr("runner.config.load.load", _raiser(VmrunError(f"bad: {NASTY}")))
    assert cli.main(["show", str(tmp_path / "vm.toml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert printed_safely(err)
    assert err.startswith("vmrun: bad: \\x1b[2J\\nfake.toml")


def _raiser(error: Exception):  # type: ignore[no-untyped-def]
    def raise_it(*_args: object) -> None:
        raise error

    return raise_it


# --- vmrun show: its output loads again -----------------------------------------------------

SHOWN = f"""\
smbios_oem_strings = ["\\u202e", "\\u0085"]
[workload]
exec = {NASTY_TOML}
args = [{NASTY_TOML}, "tab\\there", "\\u0085", "\U0001f600\\u200d\\U0001f4bb"]
env = {{ A = {NASTY_TOML} }}
hostname = "vm"
[kernel_cmdline]
prolog = "quiet x=\\"\\u202e b\\""
epilog = "say=\\"\\u2028\\""
env = {{ B = "\\u202e\\u2066" }}
"""


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_show_prints_a_file_that_loads_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    directory = tmp_path / "dir\n\x1b[2J\u202e"  # the name shown in the header comment
    directory.mkdir()
    vm = directory / "vm.toml"
    vm.write_text(SHOWN)
    first = load(str(vm))
    assert cli.main(["show", "--format", fmt, str(vm)]) == 0
    shown = capsys.readouterr().out
    assert printed_safely(shown)
    again = tmp_path / f"shown.{fmt}"
    again.write_text(shown)
    assert unstructure(load(str(again)).resources) == unstructure(first.resources)


def test_show_comments_are_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vm = tmp_path / "vm\x1b\r\n.toml"
    vm.write_text('[kernel_cmdline]\nepilog = "\\u202eb"\n')
    assert cli.main(["show", str(vm)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"# {tmp_path}/vm\\x1b\\r\\n.toml with every default filled in (vmrun show)"
    assert lines[1].startswith("# kernel command line: reboot=k ")
    assert lines[1].endswith(" \\u202eb")
    assert not lines[2].startswith("#")
