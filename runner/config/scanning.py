"""What the TOML and JSON position scanners share: a cursor over the text and the index of
where each key path is written.

``tomllib`` and ``json`` return plain values without source positions; the scanners
(`runner/config/toml_positions.py`, `runner/config/json_positions.py`) walk the text once and
record where every key and array element starts. They validate nothing, and on input they
cannot make sense of they stop quietly, keeping what they found so far.
"""

from __future__ import annotations

import contextlib

KeyPath = tuple[str | int, ...]

MAX_DEPTH = 200  # deeper nesting is garbage; stop before Python's recursion limit
WS = frozenset(" \t")
WS_NL = frozenset(" \t\r\n\ufeff")


class Stop(Exception):
    """Abandons scanning of malformed input; what was recorded is kept."""


class Scanner:
    keep_first = True  # TOML forbids duplicates; json.loads keeps the last one

    def __init__(self, source: str) -> None:
        self.s = source
        self.n = len(source)
        # Explicit definitions win over tables only implied by `[a.b]` or `a.b = 1`.
        self.found: dict[KeyPath, int] = {}
        self.implied: dict[KeyPath, int] = {}

    def run(self) -> None:
        with contextlib.suppress(Exception):  # malformed: keep the partial result
            self.scan()

    def scan(self) -> None:
        raise NotImplementedError

    def define(self, path: KeyPath, index: int) -> None:
        if self.keep_first:
            self.found.setdefault(path, index)
        else:
            self.found[path] = index

    def char(self, i: int) -> str:
        return self.s[i] if i < self.n else ""

    def skip(self, i: int, chars: frozenset[str]) -> int:
        while i < self.n and self.s[i] in chars:
            i += 1
        return i
