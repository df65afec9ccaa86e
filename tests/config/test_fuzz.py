"""Property tests: whatever a VM file holds, `load` returns a VmFile or raises ConfigError,
and the error's located lines never fail; what the schema accepts, cattrs can structure."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import tomli_w
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runner.config import convert
from runner.config.load import VmFile, load
from runner.config.positions import locate
from runner.config.problems import ConfigError
from runner.config.schema import schema

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = schema()
DEFS = SCHEMA["$defs"]
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _all_keys() -> list[str]:
    keys = set(SCHEMA["properties"])
    for definition in DEFS.values():
        keys.update(definition.get("properties", {}))
    return sorted(keys)


KEYS = _all_keys()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for every example (hypothesis and function-scoped tmp_path don't mix),
    with a few host paths a mutated document may name."""
    path = tmp_path_factory.mktemp("fuzz")
    (path / "share").mkdir()
    (path / "disk.img").write_bytes(bytes(4096))
    (path / "initrd.img").write_bytes(bytes(4096))
    return path


# --- checking one document -------------------------------------------------------------------


def _texts(document: Any) -> list[tuple[str, str]]:
    """The document as JSON and, when TOML can say it, as TOML."""
    out = [(".json", json.dumps(document, indent=1, ensure_ascii=False))]
    if isinstance(document, dict):
        # A value TOML cannot hold leaves the TOML form out.
        with contextlib.suppress(TypeError, ValueError):
            out.append((".toml", tomli_w.dumps(document)))
    return out


def _load_checked(directory: Path, suffix: str, text: str) -> VmFile | ConfigError:
    """Load `text` as a VM file: a VmFile, or a ConfigError whose lines are sound."""
    path = directory / f"vm{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        return load(str(path))
    except ConfigError as error:
        _check_error(error, text, suffix)
        return error


def _check_error(error: ConfigError, text: str, suffix: str) -> None:
    assert error.problems, "a ConfigError with no problem"
    assert len(error.problems) == len(error.locations)
    lines = error.lines()  # (c) never raises
    assert len(lines) == len(error.problems)
    line_count = text.count("\n") + 1
    for location in error.locations:
        assert 1 <= location.line <= line_count
        assert location.column >= 1
    kind = "json" if suffix == ".json" else "toml"
    for problem in error.problems:
        position = locate(text, kind, problem.path)
        assert 1 <= position.line <= line_count
    # In file order.
    order = [(loc.line, loc.column) for loc in error.locations]
    assert order == sorted(order)


def _check_document(directory: Path, document: Any) -> None:
    for suffix, text in _texts(document):
        _load_checked(directory, suffix, text)


# --- (a) random JSON-like documents ----------------------------------------------------------

_keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
_scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2, max_value=70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["tap", "passt", "fs", "block", "ports", "auto", ".", "share", "hvc0"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=25,
)


@FUZZ
@given(document=st.one_of(st.dictionaries(_keys, _values, max_size=6), _values))
def test_random_documents(workdir: Path, document: Any) -> None:
    _check_document(workdir, document)


# --- (b) mutations of a valid document -------------------------------------------------------

DEV = tomllib.loads((ROOT / "configs" / "dev.toml").read_text(encoding="utf-8"))
RICH = {
    "machine": {"vcpu_count": 2, "mem_size_mib": 256, "ht_enabled": True},
    "kernel": {"initramfs": "initrd.img"},
    "kernel_cmdline": {"env": {"A": "1"}, "epilog": "quiet"},
    "fs": [{"tag": "share", "shared_dir": "share"}],
    "block": [{"id": "root", "path": "disk.img", "read_only": True}],
    "net": [
        {"id": "eth0", "mac": "52:54:00:12:34:56", "backend": {"type": "passt"}},
        {"id": "eth1", "backend": {"type": "tap", "tap_name": "tap0"}, "features": ["csum"]},
    ],
    "dhcp_client": True,
    "vsock": {
        "tsi": ["hijack_inet"],
        "ports": [{"port": 1024, "socket_path": "v.sock"}],
        "tcp_ports": [{"host_port": 8080, "guest_port": 80}],
    },
    "serial_consoles": [{"input": "null", "output": "stdout"}],
    "virtio_consoles": [{"type": "ports", "ports": [{"type": "tty", "name": "t"}]}],
    "kernel_console": "ttyS0",
    "workload": {
        "exec": "/bin/sh",
        "args": ["-c", "true"],
        "rlimits": {"nofile": {"soft": 1024, "hard": 4096}},
        "hostname": "vm",
    },
    "root": {"type": "block", "id": "root"},
}


def test_bases_are_valid(workdir: Path) -> None:
    for base in (DEV, RICH):
        for suffix, text in _texts(base):
            assert isinstance(_load_checked(workdir, suffix, text), VmFile)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in `value`, the document itself first."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


def _get(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


def _mutate(draw: st.DrawFn, document: dict[str, Any]) -> dict[str, Any]:
    path = draw(st.sampled_from(_paths(document)))
    op = draw(st.sampled_from(["delete", "replace", "add", "wrap", "rename"]))
    if not path:  # the document itself: only keys can be added or removed
        op = draw(st.sampled_from(["add", "delete"]))
        if op == "delete" and document:
            del document[draw(st.sampled_from(sorted(document)))]
        else:
            document[draw(_keys)] = draw(_values)
        return document
    parent, last = _get(document, path[:-1]), path[-1]
    if op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = draw(_values)
    elif op == "wrap":
        parent[last] = [parent[last]]
    elif op == "add":
        target = parent[last]
        if isinstance(target, dict):
            target[draw(_keys)] = draw(_values)
        elif isinstance(target, list):
            target.insert(draw(st.integers(0, len(target))), draw(_values))
        else:
            parent[last] = draw(_values)
    elif isinstance(parent, dict):  # rename: a near miss or any other key
        new = draw(st.one_of(st.just(str(last)[:-1]), st.just(f"{last}s"), _keys))
        parent[new] = parent.pop(last)
    return document


@st.composite
def _mutated(draw: st.DrawFn) -> dict[str, Any]:
    document = copy.deepcopy(draw(st.sampled_from([DEV, RICH])))
    for _ in range(draw(st.integers(1, 4))):
        document = _mutate(draw, document)
    return document


@FUZZ
@given(document=_mutated())
def test_mutated_documents(workdir: Path, document: dict[str, Any]) -> None:
    _check_document(workdir, document)


# --- (d) what the schema accepts, the classes take -------------------------------------------


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref:
        return {
            **DEFS[ref.removeprefix("#/$defs/")],
            **{k: v for k, v in node.items() if k != "$ref"},
        }
    return node


def _strings(node: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = node.get("minLength", 0), node.get("maxLength")
    if "pattern" in node:
        base = st.from_regex(node["pattern"])
        return base.filter(lambda s: low <= len(s) and (high is None or len(s) <= high))
    return st.text(min_size=low, max_size=high if high is not None else 20)


def _integers(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    low, high = node.get("minimum"), node.get("maximum")
    ints = st.integers(min_value=low, max_value=high)
    # An integral float is an integer to JSON Schema; it must structure too.
    floats = ints.filter(lambda n: abs(n) < 2**53).map(float)
    return st.one_of(ints, ints, floats)


def from_schema(node: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Documents that (mostly) satisfy the schema `node`; the test keeps those that do."""
    node = _resolve(node)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "allOf" in node:  # a tagged union: one member, with its tag
        members = [
            (branch["if"]["properties"]["type"]["const"], branch["then"])
            for branch in node["allOf"]
        ]
        return st.one_of(
            [
                from_schema(member, depth + 1).map(lambda d, tag=tag: {**d, "type": tag})
                for tag, member in members
            ]
        )
    kind = node.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return _integers(node)
    if kind == "string":
        return _strings(node)
    if kind == "array":
        return st.lists(
            from_schema(node["items"], depth + 1),
            min_size=node.get("minItems", 0),
            max_size=min(node.get("maxItems", 3), 3),
            unique_by=(lambda x: json.dumps(x, sort_keys=True))
            if node.get("uniqueItems")
            else None,
        )
    if kind == "object" and "properties" in node:
        required = set(node.get("required", []))
        props = {k: v for k, v in node["properties"].items() if k != "$schema"}
        return st.fixed_dictionaries(
            {k: from_schema(v, depth + 1) for k, v in props.items() if k in required},
            optional={k: from_schema(v, depth + 1) for k, v in props.items() if k not in required},
        )
    if kind == "object":  # a dict field
        names = node.get("propertyNames", {})
        if "enum" in names:
            keys: st.SearchStrategy[str] = st.sampled_from(names["enum"])
        elif "pattern" in names:
            keys = st.from_regex(names["pattern"])
        else:
            keys = st.text(max_size=8)
        return st.dictionaries(
            keys, from_schema(node["additionalProperties"], depth + 1), max_size=3
        )
    raise AssertionError(f"no strategy for {node!r}")  # pragma: no cover


VALID = from_schema(SCHEMA)


def _accepted(document: Any) -> bool:
    return not any(True for _ in VALIDATOR.iter_errors(document))


@FUZZ
@given(document=VALID)
def test_schema_valid_documents_structure(document: dict[str, Any]) -> None:
    assume(_accepted(document))
    resources = convert.structure(copy.deepcopy(document))
    # And back: unstructuring gives a document the schema accepts, with every default.
    again = convert.unstructure(resources)
    assert _accepted(json.loads(json.dumps(again)))
    assert convert.structure(again) == resources


@FUZZ
@given(document=VALID)
def test_schema_valid_documents_load(workdir: Path, document: dict[str, Any]) -> None:
    # Through every stage: paths, then the semantic rules, which must not raise either.
    assume(_accepted(document))
    _check_document(workdir, document)


def test_strategy_reaches_valid_documents() -> None:
    # The schema strategy must not be all filtered away.
    seen: list[bool] = []

    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    @given(document=VALID)
    def probe(document: dict[str, Any]) -> None:
        seen.append(_accepted(document))

    probe()
    assert sum(seen) >= len(seen) // 2


def test_floats_that_are_not_integers_are_refused(workdir: Path) -> None:
    for value in (1.5, math.inf, math.nan):
        error = _load_checked(workdir, ".json", json.dumps({"machine": {"vcpu_count": value}}))
        assert isinstance(error, ConfigError)
        assert error.problems[0].path == ("machine", "vcpu_count")


# --- kernel images the memory rule reads -----------------------------------------------------


@st.composite
def _kernel_images(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bzimage", "elf", "gzip", "other"]))
    body = bytearray(draw(st.binary(max_size=0x300)))
    if kind == "bzimage":
        body.extend(bytes(max(0, 0x270 - len(body))))
        body[0x202:0x206] = b"HdrS"
        body[0x206:0x208] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "little")
        body[0x260:0x264] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    elif kind == "elf":
        header = bytearray(64)
        header[:4] = b"\x7fELF"
        header[4] = draw(st.sampled_from([1, 2, 0, 255]))
        header[0x20:0x28] = draw(st.sampled_from([64, 0, 2**64 - 1, len(body) + 64])).to_bytes(
            8, "little"
        )
        header[0x36:0x38] = draw(st.sampled_from([56, 0, 55, 64, 0xFFFF])).to_bytes(2, "little")
        header[0x38:0x3A] = draw(st.integers(0, 300)).to_bytes(2, "little")
        cut = draw(st.integers(4, 64))
        body = header[:cut] + body if cut < 64 else header + body
    elif kind == "gzip":
        body = bytearray(b"\x1f\x8b") + body
    return bytes(body)


@FUZZ
@given(image=_kernel_images(), mem=st.integers(1, 4096))
def test_any_kernel_image(workdir: Path, image: bytes, mem: int) -> None:
    (workdir / "kernel.bin").write_bytes(image)
    document = {"machine": {"mem_size_mib": mem}, "kernel": {"path": "kernel.bin"}}
    _check_document(workdir, document)
