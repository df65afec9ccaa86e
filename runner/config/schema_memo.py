"""Which VM file texts already passed the schema stage: a run need not import jsonschema again.

jsonschema's import and a validation cost about 45 ms of a ~300 ms start on a fast host, and
several times that where vmrun itself runs emulated. The schema stage is a pure function of the
file's text and the schema, so its clean result is kept in the cache under a digest of both
(an empty file per clean text). Files with problems are not kept: they fail anyway, and their
messages need the validator. A cache that cannot be written only costs the time back.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json

from runner.cache import cache_dir
from runner.config.schema import schema


@functools.cache
def _schema_digest() -> bytes:
    return hashlib.sha256(json.dumps(schema(), sort_keys=True).encode()).digest()


def _entry(kind: str, text: str) -> str:
    digest = hashlib.sha256(
        _schema_digest() + kind.encode() + b"\0" + text.encode("utf-8", "surrogatepass")
    )
    return digest.hexdigest()


def passed_before(kind: str, text: str) -> bool:
    """Whether this text, read as `kind`, passed this schema before."""
    try:
        return (cache_dir("schema-clean") / _entry(kind, text)).exists()
    except OSError:
        return False


def remember_passed(kind: str, text: str) -> None:
    with contextlib.suppress(OSError):  # a read-only cache: the next run validates again
        (cache_dir("schema-clean") / _entry(kind, text)).touch()
