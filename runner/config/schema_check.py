"""The schema stage: a parsed document against the published schema, every error at once.

jsonschema finds the errors; this module words them for a person (`unknown key `vcpus`; did
you mean `machine.vcpu_count`?` instead of a Python repr of the schema). Two checks are this
module's own, because JSON Schema cannot say them: an integer is never a float (JSON Schema
takes 2.0 for the integer 2; TOML and vmrun do not), and no string holds a NUL character.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator
from typing import Any

from runner.config import devices, model
from runner.config.problems import KeyPath, Problem
from runner.config.schema import schema
from runner.config.suggest import unknown_key_message

# What a pattern means, for messages (the schema itself can only carry the regex).
PATTERN_HINTS = {
    devices.ID_PATTERN: "may contain only letters, digits, `_`, `.` and `-`",
    devices.MAC_PATTERN: "is not a MAC address (six hex pairs: 52:54:00:12:34:56)",
    model.HOSTNAME_PATTERN: "is not a valid host name",
    model.ENV_NAME_PATTERN: "is not a variable name (letters, digits, `_`; no digit first)",
    r"^/": "must be an absolute path in the guest",
    r"^(ttyS[0-3]|hvc[0-9]{1,2})$": "must be ttyS0..ttyS3 or hvc0..hvc99",
    devices.TAP_NAME_PATTERN: "must not contain `/` or white space",
    r"^[a-z0-9_]+$": "must be a file system type name (lower-case letters, digits, `_`)",
}

NUL_MESSAGE = "holds a NUL character (\\x00), which no argument, name or path can carry"

TYPE_WORDS = {
    "integer": "an integer",
    "string": "a string",
    "boolean": "true or false",
    "object": "a table",
    "array": "an array",
    "number": "a number",
}


@functools.cache
def _validator() -> Any:
    import jsonschema  # heavy import, only on the schema path

    # JSON Schema patterns are ECMA-262 regexes, where `$` ends the string; Python's `$`
    # also matches before a final newline, which would let "eth0\n" pass as an id.
    def pattern(validator: Any, regex: str, instance: Any, _schema: Any) -> Any:
        if validator.is_type(instance, "string") and not re.search(_ecma_end(regex), instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {regex!r}")

    # JSON Schema's "integer" is any number with a zero fractional part, 2.0 and 1e30 included;
    # a float where a count, a size or an address goes is a mistake in the file (TOML keeps
    # the two apart), and 1e30 is not the integer it rounds to.
    def is_integer(_checker: Any, instance: Any) -> bool:
        return isinstance(instance, int) and not isinstance(instance, bool)

    base = jsonschema.Draft202012Validator
    checker = jsonschema.validators.extend(
        base,
        {"pattern": pattern},
        type_checker=base.TYPE_CHECKER.redefine("integer", is_integer),
    )
    return checker(schema())


def _ecma_end(regex: str) -> str:
    if regex.endswith("$") and not regex.endswith("\\$"):
        return regex[:-1] + r"\Z"
    return regex


SUGGESTED_KEYS = 100
# jsonschema takes about 60 us an error: a 1 MiB file can hold 300000 (an array of wrong
# values), 18 s of them. The first thousand say what is wrong as well.
SCHEMA_ERRORS = 1000
_RANGES = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})


def schema_problems(document: Any) -> list[Problem]:
    """Every way `document` breaks the schema, as problems with key paths."""
    found = list(itertools.islice(_validator().iter_errors(document), SCHEMA_ERRORS + 1))
    errors = found[:SCHEMA_ERRORS]
    # A value of the wrong type has one problem: 1.5 is no integer, whatever its range.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    # Suggestions cost a comparison with every known name: the first unknown keys get them,
    # and a file of 50000 unknown keys (a 1 MiB one can hold that many) is no typo.
    suggestions = iter(range(SUGGESTED_KEYS))
    problems: list[Problem] = []
    for error in errors:
        if error.validator in _RANGES and tuple(error.absolute_path) in mistyped:
            continue
        problems.extend(_explain(error, suggestions))
    if len(found) > SCHEMA_ERRORS:
        problems.append(
            Problem((), f"more than {SCHEMA_ERRORS} schema errors; those found first are listed")
        )
    problems.extend(_nul_characters(document))
    # jsonschema reports `required` once per missing key, each naming them all.
    return list(dict.fromkeys(problems))


def _nul_characters(document: Any) -> list[Problem]:
    """Every string value with a NUL: whatever it becomes (an argument, an environment entry,
    a path, a tag, the command line) is a C string on the way, which ends at the first NUL,
    so the guest would see less than the file says. (SMBIOS strings have their own rule,
    which says where the NUL is: runner/arch/x86_64/smbios.py.)"""
    problems = []
    top = document.items() if isinstance(document, dict) else []
    stack: list[tuple[Any, KeyPath]] = [
        (value, (key,)) for key, value in top if key != "smbios_oem_strings"
    ]  # iterative: documents nest deep
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if "\0" in value:
                problems.append(Problem(path, NUL_MESSAGE))
        elif isinstance(value, dict):
            stack += [(item, (*path, key)) for key, item in value.items()]
        elif isinstance(value, list):
            stack += [(item, (*path, index)) for index, item in enumerate(value)]
    return problems


def _explain(error: Any, suggestions: Iterator[int]) -> list[Problem]:
    path: KeyPath = tuple(error.absolute_path)
    value = error.instance
    kind = error.validator
    expected = error.validator_value
    if "propertyNames" in error.schema_path:
        # jsonschema checks a key as its own instance, at the path of its table: say it at
        # the key (`workload.env.1BAD`), not at the table's header.
        return [Problem(path + (value,), _message(kind, expected, value))]
    if kind == "required":
        missing = [key for key in expected if key not in value]
        return [Problem(path + (key,), f"missing required key `{key}`") for key in missing]
    if kind == "additionalProperties":
        properties = error.schema.get("properties", {})
        known = list(properties)
        below = {name: keys for name, sub in properties.items() if (keys := _keys_of(sub))}
        return [
            Problem(
                path + (key,),
                unknown_key_message(key, known, below)
                if next(suggestions, None) is not None
                else f"unknown key `{key}`",
            )
            for key in value
            if key not in properties
        ]
    return [Problem(path, _message(kind, expected, value))]


def _keys_of(node: dict[str, Any]) -> list[str]:
    """The keys of a table's schema (through its $ref), or [] for anything else."""
    ref = node.get("$ref", "")
    if ref.startswith("#/$defs/"):
        node = schema()["$defs"][ref.removeprefix("#/$defs/")]
    if node.get("type") == "object" and node.get("additionalProperties") is False:
        return list(node.get("properties", {}))
    return []


def _message(kind: str, expected: Any, value: Any) -> str:
    shown = _show(value)
    if kind == "type":
        return f"expected {TYPE_WORDS.get(expected, expected)}, got {_kind_of(value)} {shown}"
    if kind == "enum":
        return f"{shown} is not one of: {', '.join(str(v) for v in expected)}"
    if kind == "const":
        return f"must be {expected!r}, got {shown}"
    if kind == "minimum":
        return f"must be at least {expected}, got {shown}"
    if kind == "maximum":
        return f"must be at most {expected}, got {shown}"
    if kind == "minLength":
        return "must not be empty" if expected == 1 else f"must be at least {expected} characters"
    if kind == "maxLength":
        return f"must be at most {expected} characters, got {len(value)}"
    if kind == "pattern":
        return f"{shown} {PATTERN_HINTS.get(expected, f'does not match {expected}')}"
    if kind == "uniqueItems":
        return "lists an item more than once"
    if kind == "minItems":
        return f"must list at least {expected} item(s)"
    if kind == "maxItems":
        return f"must list at most {expected} item(s), got {len(value)}"
    return f"{shown} is not valid here ({kind})"


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"  # TOML dates and times


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 60 else f'"{value[:57]}..."'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            text = str(value)  # a HugeInteger (runner.config.parse) shows itself short
        except ValueError:  # more digits than Python converts
            return f"an integer of {value.bit_length()} bits"
        return text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"
    if isinstance(value, float):
        return str(value)
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[...]"
    return str(value)
