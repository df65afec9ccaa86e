from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.config.positions import KeyPath, Position, locate

TOML_LINES = [
    "# leading comment",  # 1
    'title = "x # not a comment [fake] = 1"',  # 2
    '"quoted key" = 1',  # 3
    "'lit key' = 2",  # 4
    "a.b.c = 3",  # 5
    ' spaced . "dot" = 4',  # 6
    'esc = "he said \\"[x] = 1\\" \\\\"',  # 7
    '"a\\"b" = 5',  # 8
    "",  # 9
    "[machine]",  # 10
    "vcpu_count = 2",  # 11
    'mem = { size = 512, unit = { name = "MiB" } }',  # 12
    "",  # 13
    "[[fs]]",  # 14
    'tag = "root"',  # 15
    "",  # 16
    "[[fs]]",  # 17
    'tag = """',  # 18
    "[not_a_table]",  # 19
    'fake = 1 """"',  # 20
    "ports = [",  # 21
    "  { port = 1 },  # comment ] }",  # 22
    '  { port = 2, extra = [\'x]\', "y\\"]"] },',  # 23
    "]",  # 24
    "",  # 25
    "[[net]]",  # 26
    'id = "eth0"',  # 27
    "",  # 28
    "[[net]]",  # 29
    "id = 'eth1'",  # 30
    "",  # 31
    "[ net . backend ]",  # 32
    "kind = '''",  # 33
    'kind = "nope" [x]',  # 34
    "''''",  # 35
    "after = true",  # 36
    "matrix = [[1, 2], [3, [4, 5]]]",  # 37
    "",  # 38
    "[a.deeper]",  # 39
    "x = 1979-05-27 07:32:00Z  # date with a space",  # 40
    "y = 2",  # 41
]
TOML_DOC = "\n".join(TOML_LINES) + "\n"


def test_toml_sample_is_valid() -> None:
    data = tomllib.loads(TOML_DOC)
    assert data["fs"][1]["ports"][1]["extra"] == ["x]", 'y"]']
    assert data["net"][1]["backend"]["kind"] == 'kind = "nope" [x]\n\''
    assert data['a"b'] == 5


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("title",), (2, 1)),
        (("quoted key",), (3, 1)),
        (("lit key",), (4, 1)),
        (("a",), (5, 1)),
        (("a", "b"), (5, 3)),
        (("a", "b", "c"), (5, 5)),
        (("spaced",), (6, 2)),
        (("spaced", "dot"), (6, 11)),
        (("esc",), (7, 1)),
        (('a"b',), (8, 1)),
        (("machine",), (10, 2)),
        (("machine", "vcpu_count"), (11, 1)),
        (("machine", "mem"), (12, 1)),
        (("machine", "mem", "size"), (12, 9)),
        (("machine", "mem", "unit"), (12, 21)),
        (("machine", "mem", "unit", "name"), (12, 30)),
        (("fs",), (14, 3)),
        (("fs", 0), (14, 1)),
        (("fs", 0, "tag"), (15, 1)),
        (("fs", 1), (17, 1)),
        (("fs", 1, "tag"), (18, 1)),
        (("fs", 1, "ports"), (21, 1)),
        (("fs", 1, "ports", 0), (22, 3)),
        (("fs", 1, "ports", 0, "port"), (22, 5)),
        (("fs", 1, "ports", 1), (23, 3)),
        (("fs", 1, "ports", 1, "port"), (23, 5)),
        (("fs", 1, "ports", 1, "extra"), (23, 15)),
        (("fs", 1, "ports", 1, "extra", 0), (23, 24)),
        (("fs", 1, "ports", 1, "extra", 1), (23, 30)),
        (("net",), (26, 3)),
        (("net", 0), (26, 1)),
        (("net", 0, "id"), (27, 1)),
        (("net", 1), (29, 1)),
        (("net", 1, "id"), (30, 1)),
        (("net", 1, "backend"), (32, 9)),
        (("net", 1, "backend", "kind"), (33, 1)),
        (("net", 1, "backend", "after"), (36, 1)),
        (("net", 1, "backend", "matrix"), (37, 1)),
        (("net", 1, "backend", "matrix", 0), (37, 11)),
        (("net", 1, "backend", "matrix", 0, 1), (37, 15)),
        (("net", 1, "backend", "matrix", 1), (37, 19)),
        (("net", 1, "backend", "matrix", 1, 1), (37, 23)),
        (("net", 1, "backend", "matrix", 1, 1, 0), (37, 24)),
        (("a", "deeper"), (39, 4)),
        (("a", "deeper", "x"), (40, 1)),
        (("a", "deeper", "y"), (41, 1)),
    ],
)
def test_toml_positions(path: KeyPath, expected: tuple[int, int]) -> None:
    assert locate(TOML_DOC, "toml", path) == Position(*expected)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # Strings and comments must not be mistaken for keys or tables.
        (("not_a_table",), (1, 1)),
        (("fake",), (1, 1)),
        (("fs", 1, "fake"), (17, 1)),
        (("net", 1, "backend", "kind", "x"), (33, 1)),
        (("x",), (1, 1)),
        # Prefix fallback for absent keys and indices.
        (("machine", "missing"), (10, 2)),
        (("machine", "mem", "unit", "nope", "deeper"), (12, 21)),
        (("fs", 7, "tag"), (14, 3)),
        (("fs", "tag"), (14, 3)),
        (("net", 0, "backend"), (26, 1)),
        (("machine", 0), (10, 2)),
        (("nothing", "here"), (1, 1)),
        ((), (1, 1)),
    ],
)
def test_toml_fallback(path: KeyPath, expected: tuple[int, int]) -> None:
    assert locate(TOML_DOC, "toml", path) == Position(*expected)


def test_toml_header_after_dotted_prefix_prefers_explicit_table() -> None:
    doc = "[a.b]\nx = 1\n[a]\ny = 2\n"
    assert locate(doc, "toml", ("a",)) == Position(3, 2)
    assert locate(doc, "toml", ("a", "b", "x")) == Position(2, 1)
    assert locate(doc, "toml", ("a", "y")) == Position(4, 1)


def test_toml_nested_array_of_tables() -> None:
    doc = (
        "[[fruit]]\nname = 'apple'\n[fruit.physical]\ncolor = 'red'\n"
        "[[fruit.variety]]\nname = 'red delicious'\n[[fruit.variety]]\nname = 'granny'\n"
        "[[fruit]]\nname = 'banana'\n[[fruit.variety]]\nname = 'plantain'\n"
    )
    assert tomllib.loads(doc)["fruit"][1]["variety"][0]["name"] == "plantain"
    assert locate(doc, "toml", ("fruit", 0, "physical", "color")) == Position(4, 1)
    assert locate(doc, "toml", ("fruit", 0, "variety", 1)) == Position(7, 1)
    assert locate(doc, "toml", ("fruit", 0, "variety", 1, "name")) == Position(8, 1)
    assert locate(doc, "toml", ("fruit", 1, "variety", 0, "name")) == Position(12, 1)
    assert locate(doc, "toml", ("fruit", 1, "variety", 1, "name")) == Position(11, 9)


def test_toml_multiline_strings_and_escapes() -> None:
    doc = (
        'a = """\nb = 1\n\\"""\n[t]\n"""\n'  # escaped delimiter inside
        "c = '''x''' \n"
        'd = "\\\\"\n'  # string ending in an escaped backslash
        "e = ''\n"
        'f = ""\n'
        "g = 1\n"
    )
    assert tomllib.loads(doc)["g"] == 1
    assert locate(doc, "toml", ("b",)) == Position(1, 1)
    assert locate(doc, "toml", ("t",)) == Position(1, 1)
    for line, key in enumerate("cdefg", start=6):
        assert locate(doc, "toml", (key,)) == Position(line, 1)


def test_toml_quoted_key_escapes() -> None:
    doc = '"\\u00e9\\t" = 1\n"x".\'y z\'."" = 2\n'
    assert tomllib.loads(doc) == {"é\t": 1, "x": {"y z": {"": 2}}}
    assert locate(doc, "toml", ("é\t",)) == Position(1, 1)
    assert locate(doc, "toml", ("x", "y z", "")) == Position(2, 11)


def test_columns_count_characters_and_tabs() -> None:
    doc = '"héllo" = { wörld = 1, "ü" = 2 }\n\tkey = 3\n'
    assert locate(doc, "toml", ("héllo", "wörld")) == Position(1, 13)
    assert locate(doc, "toml", ("héllo", "ü")) == Position(1, 24)
    assert locate(doc, "toml", ("key",)) == Position(2, 2)
    jdoc = '{"ä": {\t"ö": 1}}'
    assert locate(jdoc, "json", ("ä", "ö")) == Position(1, 9)


def test_crlf_line_endings() -> None:
    doc = "[machine]\r\nvcpu_count = 2\r\n[[fs]]\r\ntag = 'x'\r\n"
    assert locate(doc, "toml", ("machine", "vcpu_count")) == Position(2, 1)
    assert locate(doc, "toml", ("fs", 0, "tag")) == Position(4, 1)


JSON_LINES = [
    "{",  # 1
    '  "name": "vm",',  # 2
    '  "machine": {"vcpu_count": 2, "esc\\"aped": "a\\"b}]", "n": null},',  # 3
    '  "fs": [',  # 4
    '    {"tag": "root"},',  # 5
    '    {"tag": "data", "opts": [1, [2, 3], {"ro": true}, -1.5e3]}',  # 6
    "  ],",  # 7
    '  "empty": {}, "list": [],',  # 8
    '  "\\u00e9" : "x"',  # 9
    "}",  # 10
]
JSON_DOC = "\n".join(JSON_LINES) + "\n"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("name",), (2, 3)),
        (("machine",), (3, 3)),
        (("machine", "vcpu_count"), (3, 15)),
        (("machine", 'esc"aped'), (3, 32)),
        (("machine", "n"), (3, 55)),
        (("fs",), (4, 3)),
        (("fs", 0), (5, 5)),
        (("fs", 0, "tag"), (5, 6)),
        (("fs", 1), (6, 5)),
        (("fs", 1, "tag"), (6, 6)),
        (("fs", 1, "opts"), (6, 21)),
        (("fs", 1, "opts", 0), (6, 30)),
        (("fs", 1, "opts", 1), (6, 33)),
        (("fs", 1, "opts", 1, 1), (6, 37)),
        (("fs", 1, "opts", 2, "ro"), (6, 42)),
        (("fs", 1, "opts", 3), (6, 55)),
        (("empty",), (8, 3)),
        (("list",), (8, 16)),
        (("é",), (9, 3)),
        # Fallbacks.
        (("machine", "missing"), (3, 3)),
        (("fs", 9, "tag"), (4, 3)),
        (("empty", "x"), (8, 3)),
        (("list", 0), (8, 16)),
        (("nope",), (1, 1)),
        ((), (1, 1)),
    ],
)
def test_json_positions(path: KeyPath, expected: tuple[int, int]) -> None:
    assert json.loads(JSON_DOC)["fs"][1]["opts"][3] == -1500.0
    assert locate(JSON_DOC, "json", path) == Position(*expected)


def test_json_duplicate_key_uses_last_like_json_loads() -> None:
    assert locate('{"a": 1,\n "a": 2}', "json", ("a",)) == Position(2, 2)


@pytest.mark.parametrize(
    ("source", "kind", "path", "expected"),
    [
        ('{"a": {"b": 1, "c": ', "json", ("a", "c", "d"), (1, 16)),
        ('{"a": {"b": [1, 2', "json", ("a", "b", 1), (1, 17)),
        ('{"a" 1, "b": 2}', "json", ("b",), (1, 1)),
        ('{"a": "unterminated', "json", ("a",), (1, 2)),
        ("[machine\nvcpu = 1\n", "toml", ("machine", "vcpu"), (2, 1)),
        ("a = [1, 2\nb = 3\n", "toml", ("a", 2), (2, 1)),
        ('a = "unterminated\nb = 3\n', "toml", ("b",), (2, 1)),
        ("a = '''never closed\nb = 3\n", "toml", ("b",), (1, 1)),
        ("= 1\n[]\n[[]]\nx = { = 1, y = 2 \n", "toml", ("x", "y"), (4, 12)),
        ("", "toml", ("a",), (1, 1)),
        ("", "json", ("a",), (1, 1)),
    ],
)
def test_malformed_input_gives_best_prefix(
    source: str, kind: str, path: KeyPath, expected: tuple[int, int]
) -> None:
    assert locate(source, kind, path) == Position(*expected)  # type: ignore[arg-type]


def test_deep_nesting_does_not_raise() -> None:
    assert locate("[" * 5000, "toml", (0,) * 10) == Position(1, 1)
    assert locate("a = " + "[" * 5000, "toml", ("a",) + (0,) * 10) == Position(1, 15)
    assert locate("[" * 5000, "json", (0,) * 10) == Position(1, 11)
    assert locate('{"a":' * 5000, "json", ("a",) * 3) == Position(1, 12)


def test_odd_arguments_do_not_raise() -> None:
    assert locate("a = 1", "yaml", ("a",)) == Position(1, 1)  # type: ignore[arg-type]
    assert locate("a = 1", "toml", (["x"],)) == Position(1, 1)  # type: ignore[arg-type]
    assert locate("a = 1", "toml", ("a", ["x"])) == Position(1, 1)  # type: ignore[arg-type]
    assert locate(None, "toml", ("a",)) == Position(1, 1)  # type: ignore[arg-type]


# --- property tests -------------------------------------------------------

_paths = st.lists(
    st.one_of(st.text(max_size=4), st.integers(min_value=-2, max_value=4)), max_size=5
).map(tuple)
_kinds = st.sampled_from(["toml", "json"])


def _check_in_bounds(source: str, position: Position) -> None:
    assert isinstance(position, Position)
    lines = source.split("\n")
    assert 1 <= position.line <= len(lines)
    assert 1 <= position.column <= len(lines[position.line - 1]) + 1


@settings(max_examples=300)
@given(source=st.text(), kind=_kinds, path=_paths)
def test_never_raises_on_arbitrary_text(source: str, kind: str, path: KeyPath) -> None:
    _check_in_bounds(source, locate(source, kind, path))  # type: ignore[arg-type]


@settings(max_examples=500)
@given(
    source=st.text(alphabet="[]{}\"'=.,:#\n\r\t \\abx01u", max_size=120),
    kind=_kinds,
    path=st.lists(st.sampled_from(["a", "b", "x", "", 0, 1]), max_size=4).map(tuple),
)
def test_never_raises_on_syntax_soup(source: str, kind: str, path: KeyPath) -> None:
    _check_in_bounds(source, locate(source, kind, path))  # type: ignore[arg-type]


def _index(source: str, position: Position) -> int:
    lines = source.split("\n")
    return sum(len(line) + 1 for line in lines[: position.line - 1]) + position.column - 1


_keys = st.text(alphabet="ab_-1 .\"'#=[]{}é\\", max_size=4)
_scalars = st.one_of(
    st.integers(-5, 5),
    st.booleans(),
    st.text(alphabet="ab \"'#=[]{},.\\\n\té", max_size=6),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=12,
)
_documents = st.dictionaries(_keys, _values, max_size=4)


def _json_walk(value: Any, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), json.dumps(key)
            yield from _json_walk(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*path, index), json.dumps(item)[0]
            yield from _json_walk(item, (*path, index))


@settings(max_examples=200)
@given(data=_documents, indent=st.sampled_from([None, 0, 2, "\t"]))
def test_json_round_trip(data: dict[str, Any], indent: int | str | None) -> None:
    source = json.dumps(data, indent=indent)
    for path, text in _json_walk(data, ()):
        index = _index(source, locate(source, "json", path))
        assert source.startswith(text, index), (path, source)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _is_inline(value: Any) -> bool:
    return isinstance(value, dict) and len(value) % 2 == 1


def _is_aot(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(x, dict) for x in value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if "'" not in value and "\n" not in value and "\t" not in value and len(value) % 2:
            return f"'{value}'"
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(x) for x in value) + "]"
    items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
    return "{ " + items + " }" if items else "{}"


def _toml_dump(table: dict[str, Any], header: list[str]) -> list[str]:
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in table.items():
        if (isinstance(value, dict) and not _is_inline(value)) or _is_aot(value):
            tables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables:
        sub = [*header, _toml_key(key)]
        name = ".".join(sub)
        for element in value if isinstance(value, list) else [value]:
            lines.append(f"[[{name}]]" if isinstance(value, list) else f"[{name}]")
            lines.extend(_toml_dump(element, sub))
    return lines


def _toml_walk(value: Any, path: KeyPath, inline: bool) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), _toml_key(key)
            yield from _toml_walk(item, (*path, key), inline or _is_inline(item))
    elif isinstance(value, list):
        aot = not inline and _is_aot(value)
        for index, item in enumerate(value):
            yield (*path, index), "[[" if aot else _toml_value(item)[0]
            yield from _toml_walk(item, (*path, index), inline or not aot)


@settings(max_examples=200)
@given(data=_documents)
def test_toml_round_trip(data: dict[str, Any]) -> None:
    source = "\n".join(_toml_dump(data, [])) + "\n"
    assert tomllib.loads(source) == data, source
    for path, text in _toml_walk(data, (), False):
        index = _index(source, locate(source, "toml", path))
        assert source.startswith(text, index), (path, text, source)
