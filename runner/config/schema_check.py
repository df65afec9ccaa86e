"""The schema stage: a parsed document against the published schema, every error at once.

jsonschema finds the errors; this module only words them for a person (`unknown key
`vcpus`; did you mean `vcpu_count`?` instead of a Python repr of the schema).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from runner.config import devices, model
from runner.config.problems import KeyPath, Problem
from runner.config.schema import schema

# What a pattern means, for messages (the schema itself can only carry the regex).
PATTERN_HINTS = {
    devices.ID_PATTERN: "may contain only letters, digits, `_`, `.` and `-`",
    devices.MAC_PATTERN: "is not a MAC address (six hex pairs: 52:54:00:12:34:56)",
    model.HOSTNAME_PATTERN: "is not a valid host name",
    model.ENV_NAME_PATTERN: "is not a variable name (letters, digits, `_`; no digit first)",
    r"^/": "must be an absolute path in the guest",
    r"^(ttyS[0-3]|hvc[0-9]{1,2})$": "must be ttyS0..ttyS3 or hvc0..hvc99",
    r"^[^/\s]+$": "must not contain `/` or white space",
    r"^[a-z0-9_]+$": "must be a file system type name (lower-case letters, digits, `_`)",
}

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

    checker = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": pattern})
    return checker(schema())


def _ecma_end(regex: str) -> str:
    if regex.endswith("$") and not regex.endswith("\\$"):
        return regex[:-1] + r"\Z"
    return regex


def schema_problems(document: Any) -> list[Problem]:
    """Every way `document` breaks the schema, as problems with key paths."""
    problems: list[Problem] = []
    for error in _validator().iter_errors(document):
        problems.extend(_explain(error))
    # jsonschema reports `required` once per missing key, each naming them all.
    return list(dict.fromkeys(problems))


def _explain(error: Any) -> list[Problem]:
    path: KeyPath = tuple(error.absolute_path)
    value = error.instance
    kind = error.validator
    expected = error.validator_value
    if kind == "required":
        missing = [key for key in expected if key not in value]
        return [Problem(path + (key,), f"missing required key `{key}`") for key in missing]
    if kind == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        return [
            Problem(path + (key,), _unknown_key(key, known)) for key in value if key not in known
        ]
    return [Problem(path, _message(kind, expected, value))]


def _unknown_key(key: str, known: list[str]) -> str:
    import difflib  # only when there is an error to explain

    message = f"unknown key `{key}`"
    # A shortened name (`mem` for `mem_size_mib`) is the likeliest slip; then spelling.
    close = [name for name in known if name.startswith(key)] or difflib.get_close_matches(
        key, known, n=1, cutoff=0.5
    )
    if close:
        return f"{message}; did you mean `{close[0]}`?"
    return f"{message}; expected one of: {', '.join(known)}"


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
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[...]"
    return str(value)
