"""Reading a VM file: text -> document -> schema -> VmResources -> semantic rules.

Each stage reports every problem it finds; the first stage that finds any stops the
load, because later stages need its output whole. Problems are sorted into file order
and located (line:column) in the file's own text.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from typing import Any, Literal

import attrs

from runner.config import convert, schema_memo
from runner.config.checks import semantic_problems
from runner.config.model import VmResources
from runner.config.paths import path_problems, resolve_paths
from runner.config.problems import ConfigError, KeyPath, Location, Problem
from runner.config.schema_check import schema_problems

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FileKind = Literal["toml", "json"]
SUFFIXES: dict[str, FileKind] = {".toml": "toml", ".json": "json"}


@attrs.frozen
class _Source:
    path: str
    kind: FileKind
    text: str

    def fail(self, problems: list[Problem], at: list[Location] | None = None) -> ConfigError:
        from runner.config.positions import locate  # only on the error path

        locations = at or [Location(*locate(self.text, self.kind, p.path)) for p in problems]
        pairs = sorted(
            zip(locations, problems, strict=True), key=lambda lp: (lp[0].line, lp[0].column)
        )
        return ConfigError(self.path, [p for _, p in pairs], [loc for loc, _ in pairs])


@attrs.frozen
class VmFile:
    """A VM file that passed every stage."""

    path: str
    resources: VmResources
    source: _Source = attrs.field(repr=False, eq=False)

    def error(self, problems: list[Problem]) -> ConfigError:
        """Problems found later (by the runner) about this file, located in its text."""
        return self.source.fail(problems)


def load(path: str) -> VmFile:
    """Load and check the VM file at `path`; raises ConfigError listing every problem."""
    source = _read(path)
    document = _parse(source)
    if not schema_memo.passed_before(source.kind, source.text):
        problems = schema_problems(document)
        if problems:
            raise source.fail(problems)
        schema_memo.remember_passed(source.kind, source.text)
    document.pop("$schema", None)
    try:
        resources = convert.structure(document)
    except Exception as exc:  # the schema and the classes disagree: a vmrun bug, said as such
        raise source.fail(
            [Problem((), f"vmrun could not structure this document (a bug): {exc!r}")]
        ) from exc
    resources = with_tee_machine(resolve_paths(resources, os.path.dirname(os.path.abspath(path))))
    problems = path_problems(resources) + semantic_problems(resources)
    if problems:
        raise source.fail(problems)
    return VmFile(path, resources, source)


def with_tee_machine(resources: VmResources) -> VmResources:
    """A TEE's cpus and ram_mib replace the machine's, without hyperthreading (as libkrun's
    set_tee_config does): what `vmrun show` prints and the builder uses."""
    tee = resources.tee_config
    if tee is None:
        return resources
    machine = attrs.evolve(
        resources.machine, vcpu_count=tee.cpus, mem_size_mib=tee.ram_mib, ht_enabled=False
    )
    return attrs.evolve(resources, machine=machine)


def _read(path: str) -> _Source:
    kind = SUFFIXES.get(os.path.splitext(path)[1].lower())
    first = [Location(1, 1)]
    if kind is None:
        raise ConfigError(path, [Problem((), "a VM file ends in .toml or .json")], first)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(
            path, [Problem((), f"cannot read the file: {exc.strerror}")], first
        ) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        # Columns count characters everywhere; the bytes before the bad one are valid UTF-8.
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise ConfigError(
            path, [Problem((), "the file is not UTF-8 text")], [Location(line, column)]
        ) from exc
    # A byte-order mark is an editor's habit, not content; tomllib and json refuse it.
    return _Source(path, kind, text.removeprefix("\ufeff"))


_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)$")


def _parse(source: _Source) -> dict[str, Any]:
    if source.kind == "toml":
        try:
            document = tomllib.loads(source.text)
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
        return document
    try:
        document = json.loads(source.text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise source.fail(
            [Problem((), f"JSON syntax: {exc.msg}")], [Location(exc.lineno, exc.colno)]
        ) from exc
    except _DuplicateKey as exc:
        from runner.config.positions import json_repeated_key  # error path

        found = json_repeated_key(source.text)
        path, at = found if found else ((), Location(1, 1))
        problem = Problem(path, f"`{exc}` is given twice in one object")
        raise source.fail([problem], [Location(*at)]) from exc
    except RecursionError as exc:
        raise source.fail(
            [Problem((), "JSON syntax: nested too deeply")], [Location(1, 1)]
        ) from exc
    if not isinstance(document, dict):
        raise source.fail(
            [Problem((), "a VM file holds one object (a table) at the top")], [Location(1, 1)]
        )
    broken = list(_lone_surrogates(document, ()))
    if broken:
        raise source.fail(broken)
    return document


def _lone_surrogates(value: Any, path: KeyPath) -> Iterator[Problem]:
    # JSON's \ud800 escapes can make strings that are not Unicode text; TOML refuses them.
    if isinstance(value, str):
        if any("\ud800" <= c <= "\udfff" for c in value):
            yield Problem(path, "holds a lone UTF-16 surrogate escape, which is not text")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _lone_surrogates(key, path)
            yield from _lone_surrogates(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _lone_surrogates(item, (*path, index))


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


def _end_of(text: str) -> Location:
    lines = text.split("\n")
    return Location(len(lines), len(lines[-1]) + 1)
