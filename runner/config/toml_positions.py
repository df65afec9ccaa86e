"""Where each key path of a TOML text is written (see `runner/config/scanning.py`)."""

from __future__ import annotations

import re

from runner.config.scanning import MAX_DEPTH, WS, WS_NL, KeyPath, Scanner, Stop

_BARE_STOP = frozenset(" \t\r\n=.#[]{}\"',")  # lenient superset of TOML bare keys
_SCALAR_STOP = frozenset(",]}#\r\n")  # dates may contain spaces, so not " "
_QUOTES = frozenset("\"'")
_TOML_ESCAPES = dict(zip('btnfre"\\', '\b\t\n\f\r\x1b"\\', strict=True))
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.DOTALL)


class TomlScanner(Scanner):
    def __init__(self, source: str) -> None:
        super().__init__(source)
        # (start, end) of every value that is not a string, array or table: numbers, booleans,
        # dates. The parser looks here for integers too long for Python to read.
        self.scalars: list[tuple[int, int]] = []

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
                j = self.skip(j, WS)
                if parts and self.char(j) == "=":
                    i = self.value(self.skip(j + 1, WS), self.record(table, parts), 0)
            # Whatever follows a statement on its line is a comment (or garbage).
            end = self.s.find("\n", i)
            i = self.n if end < 0 else end + 1

    def blank(self, i: int) -> int:
        """Skip whitespace, newlines and comments."""
        while i < self.n:
            i = self.skip(i, WS_NL)
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
            i = start = self.skip(i, WS)
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
            i = self.skip(i, WS)
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
        if depth > MAX_DEPTH:
            raise Stop
        c = self.char(i)
        if c in _QUOTES:
            if self.s.startswith(c * 3, i):
                return self.long_string(i, c)
            return self.short_string(i)[1]
        if c == "[":
            return self.container(i, path, depth, "]")
        if c == "{":
            return self.container(i, path, depth, "}")
        start = i
        while i < self.n and self.s[i] not in _SCALAR_STOP:
            i += 1
        end = i
        while end > start and self.s[end - 1] in WS:
            end -= 1
        if end > start:
            self.scalars.append((start, end))
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
                j = self.skip(j, WS)
                if parts and self.char(j) == "=":
                    j = self.value(self.skip(j + 1, WS), self.record(path, parts), depth + 1)
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
