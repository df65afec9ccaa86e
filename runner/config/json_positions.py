"""Where each key path of a JSON text is written (see `runner/config/scanning.py`), and which
keys an object gives twice."""

from __future__ import annotations

import json

from runner.config.scanning import MAX_DEPTH, WS_NL, KeyPath, Scanner, Stop

_JSON_STOP = frozenset(",]}: \t\r\n")


class JsonScanner(Scanner):
    keep_first = False

    def __init__(self, source: str) -> None:
        super().__init__(source)
        # Each key given again in the same object, where it is given again. Compared per
        # object, not per key path: `{"a": {"x": 1}, "a": {"x": 2}}` repeats `a`, not `x`.
        self.repeats: list[tuple[KeyPath, int]] = []

    def scan(self) -> None:
        self.value(self.skip(0, WS_NL), (), 0)

    def value(self, i: int, path: KeyPath, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise Stop
        c = self.char(i)
        if c == '"':
            return self.string(i)[1]
        if c not in ("{", "["):
            start = i
            while i < self.n and self.s[i] not in _JSON_STOP:
                i += 1
            if i == start:
                raise Stop
            return i
        close = "}" if c == "{" else "]"
        names: set[str] = set()  # the keys of this object so far
        i += 1
        index = 0
        while True:
            i = self.skip(i, WS_NL)
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
                if name in names:
                    self.repeats.append((element, i))
                names.add(name)
                self.define(element, i)
                j = self.skip(j, WS_NL)
                if self.char(j) != ":":
                    raise Stop
                i = self.skip(j + 1, WS_NL)
            else:
                raise Stop
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
        raise Stop
