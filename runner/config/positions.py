"""Map a key path inside a TOML or JSON document to its line and column.

``tomllib`` and ``json`` return plain values without source positions, so
error messages of the form ``FILE:LINE:COL: key.path: message`` need this
small scanner.  It does not validate anything: it records where every key and
array element starts and, on input it cannot make sense of, stops quietly
while keeping what it has found so far.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Literal, NamedTuple

KeyPath = tuple[str | int, ...]


class Position(NamedTuple):
    line: int  # 1-based
    column: int  # 1-based, counted in characters (a tab is one)


_MAX_DEPTH = 200  # deeper nesting is garbage; stop before Python's recursion limit
_WS = frozenset(" \t")
_WS_NL = frozenset(" \t\r\n\ufeff")
_BARE_STOP = frozenset(" \t\r\n=.#[]{}\"',")  # lenient superset of TOML bare keys
_SCALAR_STOP = frozenset(",]}#\r\n")  # dates may contain spaces, so not " "
_JSON_STOP = frozenset(",]}: \t\r\n")
_QUOTES = frozenset("\"'")
_TOML_ESCAPES = dict(zip('btnfre"\\', '\b\t\n\f\r\x1b"\\', strict=True))
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.DOTALL)


def locate(source: str, kind: Literal["toml", "json"], path: KeyPath) -> Position:
    """Return where the deepest present element of ``path`` is written.

    A key's position is where its name (or opening quote) starts; an array
    element's is where its value starts; an element of a TOML array of tables
    is the ``[[`` of its header.  Missing trailing elements fall back to the
    longest present prefix, and to ``Position(1, 1)`` when nothing matches.
    Never raises.
    """
    # The contract is "never raise", even on nonsense arguments.
    with contextlib.suppress(Exception):
        scanner: _Scanner
        if kind == "toml":
            scanner = _Toml(source)
        elif kind == "json":
            scanner = _Json(source)
        else:
            return Position(1, 1)
        scanner.run()
        for size in range(len(path), 0, -1):
            index = scanner.lookup(tuple(path[:size]))
            if index is not None:
                return _position(source, index)
    return Position(1, 1)


def json_repeated_key(source: str) -> tuple[KeyPath, Position] | None:
    """The first key that a JSON text gives twice in one object, and where it is repeated."""
    scanner = _Json(source)
    scanner.run()
    if not scanner.repeats:
        return None
    path, index = scanner.repeats[0]
    return path, _position(source, index)


def _position(source: str, index: int) -> Position:
    line_start = source.rfind("\n", 0, index) + 1
    return Position(source.count("\n", 0, index) + 1, index - line_start + 1)


class _Stop(Exception):
    """Abandons scanning of malformed input; what was recorded is kept."""


class _Scanner:
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

    def lookup(self, path: KeyPath) -> int | None:
        try:
            index = self.found.get(path)
            return self.implied.get(path) if index is None else index
        except TypeError:  # unhashable path element
            return None

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


class _Toml(_Scanner):
    def scan(self) -> None:
        table: KeyPath = ()
        aot_sizes: dict[KeyPath, int] = {}  # resolved array-of-tables path -> elements
        i = 0
        while i < self.n:
            i = self.blank(i)
            if self.char(i) == "[":
                i, table = self.header(i, table, aot_sizes)
            elif i < self.n:
                parts, j = self.key(i)
                j = self.skip(j, _WS)
                if parts and self.char(j) == "=":
                    i = self.value(self.skip(j + 1, _WS), self.record(table, parts), 0)
            # Whatever follows a statement on its line is a comment (or garbage).
            end = self.s.find("\n", i)
            i = self.n if end < 0 else end + 1

    def blank(self, i: int) -> int:
        """Skip whitespace, newlines and comments."""
        while i < self.n:
            i = self.skip(i, _WS_NL)
            if self.char(i) != "#":
                break
            end = self.s.find("\n", i)
            i = self.n if end < 0 else end
        return i

    def header(self, i: int, table: KeyPath, aot_sizes: dict[KeyPath, int]) -> tuple[int, KeyPath]:
        start = i
        double = self.s.startswith("[[", i)
        parts, i = self.key(i + (2 if double else 1))
        if not parts:
            return i, table
        path: KeyPath = ()
        for k, (name, pos) in enumerate(parts):
            path = (*path, name)
            last = k == len(parts) - 1
            if last and double:
                self.found.setdefault(path, pos)
                size = aot_sizes.get(path, 0)
                aot_sizes[path] = size + 1
                path = (*path, size)
                self.found[path] = start
            elif last:
                self.define(path, pos)
            else:
                self.implied.setdefault(path, pos)
                # `[net.backend]` after `[[net]]` belongs to the last net element.
                if path in aot_sizes:
                    path = (*path, aot_sizes[path] - 1)
        return i, path

    def record(self, base: KeyPath, parts: list[tuple[str, int]]) -> KeyPath:
        path = base
        for k, (name, pos) in enumerate(parts):
            path = (*path, name)
            if k == len(parts) - 1:
                self.define(path, pos)
            else:
                self.implied.setdefault(path, pos)
        return path

    def key(self, i: int) -> tuple[list[tuple[str, int]], int]:
        """Parse a possibly dotted key into (name, start index) parts."""
        parts: list[tuple[str, int]] = []
        while True:
            i = start = self.skip(i, _WS)
            quote = self.char(i)
            if quote in _QUOTES:
                raw, i = self.short_string(i)
                parts.append((raw if quote == "'" else _unescape(raw), start))
            else:
                while i < self.n and self.s[i] not in _BARE_STOP:
                    i += 1
                if i == start:
                    return parts, i
                parts.append((self.s[start:i], start))
            i = self.skip(i, _WS)
            if self.char(i) != ".":
                return parts, i
            i += 1

    def short_string(self, i: int) -> tuple[str, int]:
        """Return the raw content and end of a one-line string starting at i."""
        quote, j = self.s[i], i + 1
        while j < self.n:
            c = self.s[j]
            if c == quote:
                return self.s[i + 1 : j], j + 1
            if c == "\n":
                break
            j += 2 if c == "\\" and quote == '"' else 1
        j = min(j, self.n)
        return self.s[i + 1 : j], j

    def long_string(self, i: int, quote: str) -> int:
        delimiter = quote * 3
        i += 3
        while i < self.n:
            if self.s[i] == "\\" and quote == '"':
                i += 2
            elif self.s.startswith(delimiter, i):
                i += 3
                # Up to two more quotes are content: `""""` ends in a quote.
                for _ in range(2):
                    if self.char(i) == quote:
                        i += 1
                return i
            else:
                i += 1
        return self.n

    def value(self, i: int, path: KeyPath, depth: int) -> int:
        if depth > _MAX_DEPTH:
            raise _Stop
        c = self.char(i)
        if c in _QUOTES:
            if self.s.startswith(c * 3, i):
                return self.long_string(i, c)
            return self.short_string(i)[1]
        if c == "[":
            return self.container(i, path, depth, "]")
        if c == "{":
            return self.container(i, path, depth, "}")
        while i < self.n and self.s[i] not in _SCALAR_STOP:
            i += 1
        return i

    def container(self, i: int, path: KeyPath, depth: int, close: str) -> int:
        """Scan an array (close="]") or inline table (close="}") opening at i."""
        i += 1
        index = 0
        while True:
            i = self.blank(i)
            c = self.char(i)
            if c == close:
                return i + 1
            if not c:
                return i
            if c == ",":
                i += 1
                continue
            if close == "]":
                element = (*path, index)
                index += 1
                self.define(element, i)
                j = self.value(i, element, depth + 1)
            else:
                parts, j = self.key(i)
                j = self.skip(j, _WS)
                if parts and self.char(j) == "=":
                    j = self.value(self.skip(j + 1, _WS), self.record(path, parts), depth + 1)
            i = j if j > i else i + 1  # always make progress on garbage


def _unescape(raw: str) -> str:
    """Decode TOML basic-string escapes, keeping anything malformed verbatim."""

    def one(match: re.Match[str]) -> str:
        escape = match[1]
        if len(escape) > 1:
            code = int(escape[1:], 16)
            return chr(code) if code <= 0x10FFFF else match[0]
        return _TOML_ESCAPES.get(escape, match[0])

    return _ESCAPE.sub(one, raw)


class _Json(_Scanner):
    keep_first = False

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.repeats: list[tuple[KeyPath, int]] = []  # keys given again in the same object

    def define(self, path: KeyPath, index: int) -> None:
        if path in self.found and isinstance(path[-1], str):
            self.repeats.append((path, index))
        super().define(path, index)

    def scan(self) -> None:
        self.value(self.skip(0, _WS_NL), (), 0)

    def value(self, i: int, path: KeyPath, depth: int) -> int:
        if depth > _MAX_DEPTH:
            raise _Stop
        c = self.char(i)
        if c == '"':
            return self.string(i)[1]
        if c not in ("{", "["):
            start = i
            while i < self.n and self.s[i] not in _JSON_STOP:
                i += 1
            if i == start:
                raise _Stop
            return i
        close = "}" if c == "{" else "]"
        i += 1
        index = 0
        while True:
            i = self.skip(i, _WS_NL)
            c = self.char(i)
            if c == close:
                return i + 1
            if c == ",":
                i += 1
                continue
            element: KeyPath
            if close == "]":
                element = (*path, index)
                index += 1
                self.define(element, i)
            elif c == '"':
                name, j = self.string(i)
                element = (*path, name)
                self.define(element, i)
                j = self.skip(j, _WS_NL)
                if self.char(j) != ":":
                    raise _Stop
                i = self.skip(j + 1, _WS_NL)
            else:
                raise _Stop
            i = self.value(i, element, depth + 1)

    def string(self, i: int) -> tuple[str, int]:
        j = i + 1
        while j < self.n:
            c = self.s[j]
            if c == '"':
                raw = self.s[i : j + 1]
                try:
                    return str(json.loads(raw)), j + 1
                except ValueError:
                    return raw[1:-1], j + 1
            j += 2 if c == "\\" else 1
        raise _Stop
