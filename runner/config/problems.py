"""Problems found in a VM file, and the error that carries all of them at once."""

from __future__ import annotations

import attrs

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
        """`FILE:LINE:COL: key.path: message`, one per problem."""
        return [
            f"{self.file}:{loc.line}:{loc.column}: {problem}"
            for problem, loc in zip(self.problems, self.locations, strict=True)
        ]
