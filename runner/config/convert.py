"""The cattrs converter between checked documents and the model classes.

Unions of model classes are tagged by their `type` field (`backend = { type = "tap", ... }`),
the same discriminator the schema uses, so structuring never has to guess.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

import attrs
import cattrs

from runner.config import model


def union_members(tp: Any) -> tuple[type, ...]:
    """The attrs classes of a tagged union type, or () when `tp` is not one."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return ()
    members = tuple(arg for arg in typing.get_args(tp) if arg is not type(None))
    if len(members) > 1 and all(attrs.has(m) for m in members):
        return members
    return ()


def tag_of(cls: type) -> str:
    """The `type` tag of a union member (the default of its `type` field)."""
    return attrs.fields_dict(cls)["type"].default


@functools.cache
def converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def structure_tagged(value: Any, tp: Any) -> Any:
        by_tag = {tag_of(m): m for m in union_members(tp)}
        return conv.structure(value, by_tag[value["type"]])

    conv.register_structure_hook_func(lambda tp: bool(union_members(tp)), structure_tagged)
    return conv


def structure(document: dict[str, Any]) -> model.VmResources:
    """Turn a document that the schema accepted into the model (it cannot fail then)."""
    return converter().structure(document, model.VmResources)


def unstructure(resources: Any) -> Any:
    """The document form of a model object, every default filled in and None left out
    (TOML has no null)."""
    return _without_none(converter().unstructure(resources))


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value
