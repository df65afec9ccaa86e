"""Map a key path inside a TOML or JSON document to its line and column.

``tomllib`` and ``json`` return plain values without source positions, so error messages of
the form ``FILE:LINE:COL: key.path: message`` need a scanner of their own
(`runner/config/toml_positions.py`, `runner/config/json_positions.py`). A text is scanned
once into an `Index`, and every problem of a load is located in it: locating N problems costs
one scan, not N (2000 unknown keys took 20 s when each rescanned the text).
"""

from __future__ import annotations

import bisect
import contextlib
import re
from typing import Literal, NamedTuple

import attrs

from runner.config.json_positions import JsonScanner
from runner.config.scanning import KeyPath, Scanner
from runner.config.toml_positions import TomlScanner

__all__ = ["Index", "KeyPath", "Position", "index", "json_repeated_keys", "locate"]


class Position(NamedTuple):
    line: int  # 1-based
    column: int  # 1-based, counted in characters (a tab is one)


@attrs.frozen
class Index:
    """Where each key path of one text is written, and where its lines start."""

    found: dict[KeyPath, int]
    implied: dict[KeyPath, int]
    line_starts: list[int]  # the index of each line's first character
    # TOML: where each value that is neither a string nor a container is written.
    scalars: list[tuple[int, int]] = attrs.field(factory=list)
    # JSON: each key given again in one object, where it is given again.
    repeats: list[tuple[KeyPath, int]] = attrs.field(factory=list)

    def locate(self, path: KeyPath) -> Position:
        """Where the deepest present element of ``path`` is written.

        A key's position is where its name (or opening quote) starts; an array element's is
        where its value starts; an element of a TOML array of tables is the ``[[`` of its
        header. Missing trailing elements fall back to the longest present prefix, and to
        ``Position(1, 1)`` when nothing matches. Never raises.
        """
        with contextlib.suppress(Exception):  # the contract is "never raise", even on nonsense
            for size in range(len(path), 0, -1):
                prefix = tuple(path[:size])
                at = self.found.get(prefix)
                if at is None:
                    at = self.implied.get(prefix)
                if at is not None:
                    return self.position(at)
        return Position(1, 1)

    def position(self, at: int) -> Position:
        line = bisect.bisect_right(self.line_starts, at)
        return Position(line, at - self.line_starts[line - 1] + 1)


def index(source: str, kind: Literal["toml", "json"]) -> Index:
    """Scan ``source`` once; never raises (nonsense gives an index that finds nothing)."""
    with contextlib.suppress(Exception):
        scanner: Scanner
        if kind == "toml":
            scanner = TomlScanner(source)
        elif kind == "json":
            scanner = JsonScanner(source)
        else:
            return _EMPTY
        scanner.run()
        starts = [0] + [match.end() for match in _NEWLINE.finditer(source)]
        return Index(
            scanner.found,
            scanner.implied,
            starts,
            getattr(scanner, "scalars", []),
            getattr(scanner, "repeats", []),
        )
    return _EMPTY


_EMPTY = Index({}, {}, [0])
_NEWLINE = re.compile("\n")


def locate(source: str, kind: Literal["toml", "json"], path: KeyPath) -> Position:
    """Where ``path`` is written in ``source`` (see `Index.locate`); never raises."""
    return index(source, kind).locate(path)


def json_repeated_keys(source: str) -> list[tuple[KeyPath, Position]]:
    """Every key that a JSON text gives twice in one object, and where it is given again."""
    found = index(source, "json")
    return [(path, found.position(at)) for path, at in found.repeats]
