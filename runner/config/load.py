"""Reading a VM file: text -> document -> schema -> VmResources -> semantic rules.

Each stage reports every problem it finds; the first stage that finds any stops the
load, because later stages need its output whole. Problems are sorted into file order
and located (line:column) in the file's own text.
"""

from __future__ import annotations

import os

import attrs

from runner.config import convert, schema_memo
from runner.config.checks import semantic_problems
from runner.config.model import VmResources
from runner.config.parse import parse
from runner.config.paths import path_problems, resolve_paths
from runner.config.problems import ConfigError, Problem
from runner.config.schema_check import schema_problems
from runner.config.source import Source, read_source


@attrs.frozen
class VmFile:
    """A VM file that passed every stage."""

    path: str
    resources: VmResources
    source: Source = attrs.field(repr=False, eq=False)

    def error(self, problems: list[Problem]) -> ConfigError:
        """Problems found later (by the runner) about this file, located in its text."""
        return self.source.fail(problems)


def load(path: str) -> VmFile:
    """Load and check the VM file at `path`; raises ConfigError listing every problem."""
    source = read_source(path)
    document = parse(source)
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
