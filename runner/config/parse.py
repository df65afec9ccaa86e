"""A VM file's text as a document (plain dicts, lists and scalars), TOML or JSON.

What the parsers would get wrong is refused or kept apart here, each located:
- syntax errors (tomllib's "(at line L, column C)", json's lineno and colno);
- a JSON key given twice in one object (json keeps the last, silently): every repeat;
- JSON strings with lone UTF-16 surrogates (`\\ud800`), which are not text;
- integers too long to read or print as decimal text: Python refuses either past 4300 digits
  (a guard against quadratic conversions), so tomllib and json would raise a ValueError that
  is no syntax error. They become `HugeInteger`, which the schema refuses as out of range.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

from runner.config.problems import KeyPath, Location, Problem
from runner.config.source import Source

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Python's default limit (sys.get_int_max_str_digits) on decimal digits converted either way.
READABLE_DIGITS = 4300
# An integer of more bits than this may have more digits than str() converts.
_PRINTABLE_BITS = READABLE_DIGITS * 3
_BITS_PER_DIGIT = 3.33  # log2(10), rounded up
_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)$")
_DECIMAL = re.compile(r"[+-]?[0-9](?:_?[0-9])*")
_STAND_IN = 7 * 10**40  # plus k: the k-th huge TOML literal while the text is parsed again


class HugeInteger(int):
    """An integer too long for Python to read or print in decimal. It compares as a number of
    its size (so the schema's ranges refuse it) and is shown by its first digits and length."""

    shown: str

    def __new__(cls, value: int, shown: str) -> HugeInteger:
        number = super().__new__(cls, value)
        number.shown = shown
        return number

    def __repr__(self) -> str:
        return self.shown

    __str__ = __repr__

    @classmethod
    def from_literal(cls, literal: str) -> HugeInteger:
        """From its decimal text, which is never converted (that is what Python refuses)."""
        sign = "-" if literal.startswith("-") else ""
        digits = literal.lstrip("+-").replace("_", "")
        magnitude = 1 << int(len(digits) * _BITS_PER_DIGIT)
        return cls(
            -magnitude if sign else magnitude, f"{sign}{digits[:12]}...({len(digits)} digits)"
        )

    @classmethod
    def from_int(cls, value: int) -> HugeInteger:
        """From a value read from hex, octal or binary, which Python reads at any length."""
        sign = "-" if value < 0 else ""
        return cls(value, f"{sign}{hex(abs(value))[:14]}...({abs(value).bit_length()} bits)")


def parse(source: Source) -> dict[str, Any]:
    """The document in `source`'s text; raises ConfigError with every problem found."""
    document = _toml(source) if source.kind == "toml" else _json(source)
    if not isinstance(document, dict):
        raise source.fail(
            [Problem((), "a VM file holds one object (a table) at the top")], [Location(1, 1)]
        )
    broken = list(_lone_surrogates(document))
    if broken:
        raise source.fail(broken)
    return document


def _toml(source: Source) -> Any:
    try:
        try:
            return _readable(tomllib.loads(source.text), {})
        except tomllib.TOMLDecodeError:
            raise
        except ValueError:  # int() refused a decimal literal: the only ValueError tomllib lets by
            return _toml_with_huge_integers(source)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_AT.search(message)
        at = Location(int(found[1]), int(found[2])) if found else _end_of(source.text)
        text = _TOML_AT.sub("", message).replace("(at end of document)", "").strip()
        raise source.fail([Problem((), f"TOML syntax: {text}")], [at]) from exc
    except RecursionError as exc:
        raise source.fail(
            [Problem((), "TOML syntax: nested too deeply")], [Location(1, 1)]
        ) from exc


def _toml_with_huge_integers(source: Source) -> Any:
    """Parse again with each over-long decimal literal replaced by a stand-in of the same
    length (so that positions in later syntax errors hold), then put HugeIntegers back."""
    from runner.config.positions import index  # only for such a file

    text = source.text
    # What int() refuses here (Python 3.10 before 3.10.7 has no limit, and no such error).
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)() or READABLE_DIGITS
    pieces, stand_ins, last = [], {}, 0
    for start, end in index(text, "toml").scalars:
        # Its leading digits: tomllib reads them as an integer even when more follows (a
        # date with a 5000-digit year), and what follows is then its syntax error.
        found = _DECIMAL.match(text, start, end)
        is_float = found and text[found.end() : found.end() + 1] in (".", "e", "E")
        if found and not is_float and sum(c.isdigit() for c in found[0]) > limit:
            stand_in = _STAND_IN + len(stand_ins)
            stand_ins[stand_in] = HugeInteger.from_literal(found[0])
            pieces += [text[last:start], str(stand_in).ljust(found.end() - start)]
            last = found.end()
    if not stand_ins:  # no literal explains it: a vmrun bug, reported as one
        raise RuntimeError("tomllib raised a ValueError, but no integer literal is too long")
    pieces.append(text[last:])
    return _readable(tomllib.loads("".join(pieces)), stand_ins)


def _readable(document: Any, stand_ins: dict[int, HugeInteger]) -> Any:
    """`document` with stand-ins and integers too long to print made HugeIntegers (in place;
    iterative, since a document may nest as deep as the parser allows)."""
    if not isinstance(document, dict | list):
        return document
    stack: list[Any] = [document]
    while stack:
        container = stack.pop()
        keys = container.keys() if isinstance(container, dict) else range(len(container))
        for key in keys:
            value = container[key]
            if isinstance(value, dict | list):
                stack.append(value)
            elif isinstance(value, int) and not isinstance(value, bool | HugeInteger):
                if value in stand_ins:
                    container[key] = stand_ins[value]
                elif value.bit_length() > _PRINTABLE_BITS:
                    container[key] = HugeInteger.from_int(value)
    return document


def _json(source: Source) -> Any:
    try:
        return json.loads(
            source.text, object_pairs_hook=_no_duplicate_keys, parse_int=_json_integer
        )
    except json.JSONDecodeError as exc:
        raise source.fail(
            [Problem((), f"JSON syntax: {exc.msg}")], [Location(exc.lineno, exc.colno)]
        ) from exc
    except _DuplicateKey as exc:
        from runner.config.positions import json_repeated_keys  # error path

        repeats = json_repeated_keys(source.text) or [((), (1, 1))]
        problems = [Problem(path, f"`{path[-1] if path else exc}` is given twice in one object")
                    for path, _ in repeats]  # fmt: skip
        raise source.fail(problems, [Location(*at) for _, at in repeats]) from exc
    except RecursionError as exc:
        raise source.fail(
            [Problem((), "JSON syntax: nested too deeply")], [Location(1, 1)]
        ) from exc


def _json_integer(literal: str) -> int:
    if len(literal) - literal.startswith("-") > READABLE_DIGITS:
        return HugeInteger.from_literal(literal)
    return int(literal)


class _DuplicateKey(Exception):
    """A JSON object gives a key twice (json keeps the last; vmrun refuses)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A setting that silently loses to a later one is lost: refuse it, as TOML does.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _lone_surrogates(document: dict[str, Any]) -> Iterator[Problem]:
    # JSON's \ud800 escapes can make strings that are not Unicode text; TOML refuses them.
    stack: list[tuple[Any, KeyPath]] = [(document, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if any("\ud800" <= c <= "\udfff" for c in value):
                yield Problem(path, "holds a lone UTF-16 surrogate escape, which is not text")
        elif isinstance(value, dict):
            for key, item in value.items():
                stack += [(key, path), (item, (*path, key))]
        elif isinstance(value, list):
            stack += [(item, (*path, index)) for index, item in enumerate(value)]


def _end_of(text: str) -> Location:
    lines = text.split("\n")
    return Location(len(lines), len(lines[-1]) + 1)
