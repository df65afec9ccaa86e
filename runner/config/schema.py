"""The published JSON Schema (draft 2020-12), generated from the model classes.

`schemas/vmrun.schema.json` is this module's output, checked in so that editors and CI tools
can use it; a test keeps the two identical (regenerate with `vmrun schema > schemas/...`).
"""

from __future__ import annotations

import functools
import json
import types
import typing
from typing import Any, Literal

import attrs

from runner.config import model
from runner.config.convert import tag_of, union_members, unstructure
from runner.config.fields import description_of, schema_keywords_of

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://vmrun.invalid/schemas/vmrun.schema.json"


class _Builder:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def for_type(self, tp: Any) -> dict[str, Any]:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is bool:
            return {"type": "boolean"}
        if tp is int:
            return {"type": "integer"}
        if tp is str:
            return {"type": "string"}
        if origin is Literal:
            if len(args) == 1:
                return {"const": args[0]}
            return {"type": "string", "enum": list(args)}
        if union_members(tp):
            return self.for_tagged_union(union_members(tp))
        if origin in (typing.Union, types.UnionType):
            # `X | None`: a file leaves an optional key out; TOML has no null.
            (inner,) = [a for a in args if a is not type(None)]
            return self.for_type(inner)
        if origin is tuple:
            return {"type": "array", "items": self.for_type(args[0])}
        if origin is dict:
            key_tp, value_tp = args
            out: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self.for_type(value_tp),
            }
            if typing.get_origin(key_tp) is Literal:
                out["propertyNames"] = {"enum": list(typing.get_args(key_tp))}
            return out
        if attrs.has(tp):
            return {"$ref": f"#/$defs/{self.define(tp)}"}
        raise TypeError(f"no schema for {tp!r}")

    def for_tagged_union(self, members: tuple[type, ...]) -> dict[str, Any]:
        tags = [tag_of(m) for m in members]
        return {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"enum": tags, "description": "Which kind: " + ", ".join(tags) + "."}
            },
            "allOf": [
                {
                    # `type: object` keeps a non-table value from matching every branch.
                    "if": {
                        "type": "object",
                        "properties": {"type": {"const": tag}},
                        "required": ["type"],
                    },
                    "then": {"$ref": f"#/$defs/{self.define(member)}"},
                }
                for tag, member in zip(tags, members, strict=True)
            ],
        }

    def define(self, cls: type) -> str:
        name = cls.__name__
        if name not in self.defs:
            self.defs[name] = {}  # placeholder against recursion
            self.defs[name] = self.for_class(cls)
        return name

    def for_class(self, cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            prop = self.for_type(hints[field.name])
            prop.update(schema_keywords_of(field))
            prop["description"] = description_of(field)
            if field.default is attrs.NOTHING:
                required.append(field.name)
            else:
                default = _default_of(field)
                if default is not None:
                    prop["default"] = default
            properties[field.name] = prop
        out: dict[str, Any] = {
            "type": "object",
            "description": _doc(cls),
            "additionalProperties": False,
            "properties": properties,
        }
        if required:
            out["required"] = required
        return out


def _default_of(field: attrs.Attribute) -> Any:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    return unstructure(default)


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


@functools.cache
def schema() -> dict[str, Any]:
    builder = _Builder()
    top = builder.for_class(model.VmResources)
    top["properties"] = {
        "$schema": {
            "type": "string",
            "description": "Where the schema of this file is (for editors; vmrun ignores it).",
        },
        **top["properties"],
    }
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "vmrun VM definition",
        **top,
        "$defs": dict(sorted(builder.defs.items())),
    }


def schema_text() -> str:
    return json.dumps(schema(), indent=2) + "\n"
