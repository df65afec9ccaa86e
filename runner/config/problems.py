"""Problems found in a VM file, and the error that carries all of them at once."""

from __future__ import annotations

from typing import Any

import attrs

from runner.printable import printable

KeyPath = tuple[str | int, ...]


def format_key_path(path: KeyPath) -> str:
    """`("fs", 1, "tag")` -> `fs[1].tag`; the empty path is the whole document."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(document)"


@attrs.frozen
class Problem:
    """One thing wrong with a VM file: where (a key path in the document) and what."""

    path: KeyPath
    message: str

    def __str__(self) -> str:
        return f"{format_key_path(self.path)}: {self.message}"


@attrs.frozen
class Location:
    """Where a problem is in the file's text (1-based)."""

    line: int
    column: int


class ConfigError(Exception):
    """A VM file that cannot be used; `problems` lists everything wrong with it, in file order."""

    def __init__(self, file: str, problems: list[Problem], locations: list[Location]) -> None:
        super().__init__(f"{file}: {len(problems)} problem(s)")
        self.file = file
        self.problems = problems
        self.locations = locations

    def lines(self) -> list[str]:
        """`FILE:LINE:COL: key.path: message`, one per problem, each one line: what the file
        wrote (and the file's own name) is escaped where it is not printable."""
        return [
            f"{printable(self.file)}:{loc.line}:{loc.column}: {printable(str(problem))}"
            for problem, loc in zip(self.problems, self.locations, strict=True)
        ]

    def records(self) -> list[dict[str, Any]]:
        """One JSON object per problem (`vmrun validate --format json`), escaped as `lines`:
        a CI tool that prints a decoded message prints no raw control character either."""
        return [
            {
                "file": printable(self.file),
                "line": loc.line,
                "column": loc.column,
                "path": printable(format_key_path(problem.path)),
                "message": printable(problem.message),
            }
            for problem, loc in zip(self.problems, self.locations, strict=True)
        ]
