"""What the command in the emulated host is told about vmrun's stdio (inbound_ports.py)."""

from __future__ import annotations

import pytest

from runner import terminal
from runner.emulated.inbound_ports import StdinMode, StdioFacts, stdio_facts


@pytest.mark.parametrize(
    ("found", "stdin", "listed", "raw"),
    [
        ({0, 1, 2}, "raw", "0 1 2", True),
        # A terminal passed on as it is (`vmrun emulated-host`) reaches the command as
        # lines: no console's for a vmrun in there.
        ({0, 1, 2}, "pass", "1 2", False),
        ({0, 1, 2}, "null", "1 2", False),
        ({1}, "raw", "1", False),  # a pipe on stdin: nothing to make raw
        (set(), "raw", "", False),
    ],
)
def test_stdin_is_a_terminal_in_there_only_when_it_passes_keys_raw(
    monkeypatch: pytest.MonkeyPatch, found: set[int], stdin: StdinMode, listed: str, raw: bool
) -> None:
    sizes: list[int] = []
    monkeypatch.setattr(terminal, "stdio_terminals", lambda: frozenset(found))
    monkeypatch.setattr(terminal, "window_size", lambda fd: sizes.append(fd) or (24, 80))
    facts = stdio_facts(stdin)
    assert facts.raw is raw
    size = "24 80" if listed else ""
    assert facts.env() == {terminal.TERMINALS_ENV: listed, terminal.SIZE_ENV: size}
    # The size is the first listed terminal's, and the one whose changes are sent.
    assert sizes == ([int(listed.split()[0])] if listed else [])
    assert facts.size_fd == (int(listed.split()[0]) if listed else None)


def test_no_terminal_no_size() -> None:
    assert StdioFacts(frozenset(), None, raw=False).env() == {
        terminal.TERMINALS_ENV: "",
        terminal.SIZE_ENV: "",
    }
