"""What an unknown key was probably meant to be: a close key of its table, or of a table one
level down (`vcpus` at the top is `machine.vcpu_count`), else the keys the table knows.

Only close names are suggested: a key that shortens a known one (`mem`, `vcpus` for
`vcpu_count`), a spelling slip (difflib's ratio of 0.75 or more: `kernal`, `vsok`), a word of
one (`cmdline` for `kernel_cmdline`), or the exact name of a key one level down. A far name
(`gpu` for `vcpus`, a ratio of 0.5) is worse than none: the message lists the keys instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

# difflib's ratio from which two names count as one misspelt: `kernal`/`kernel` 0.83,
# `vsok`/`vsock` 0.89; `cpu`/`gpu` (0.67) and `vcpus`/`gpu` (0.5) are different words.
CLOSE_RATIO = 0.75
MAX_SUGGESTIONS = 3
_EXACT, _SHORTENED, _MISSPELT, _WORD = range(4)


def unknown_key_message(key: str, known: Sequence[str], below: dict[str, Sequence[str]]) -> str:
    """`unknown key `key`` with a suggestion from `known` (this table's keys) or `below`
    (the keys of each table among them), else the list of `known`."""
    message = f"unknown key `{key}`"
    candidates = [(0, name, name) for name in known] + [
        (1, f"{table}.{name}", name) for table, names in below.items() for name in names
    ]
    # One matcher per key, as difflib.get_close_matches does: what it learns of the key is
    # reused for each name.
    matcher = difflib.SequenceMatcher(None, "", key, autojunk=False)
    ranked = []
    for level, shown, name in candidates:
        rank = _closeness(key, name, matcher, deeper=level > 0)
        if rank is not None:
            ranked.append(((level, *rank), shown))
    if ranked:
        best = min(score for score, _ in ranked)
        names = [shown for score, shown in sorted(ranked) if score == best][:MAX_SUGGESTIONS]
        return f"{message}; did you mean {' or '.join(f'`{n}`' for n in names)}?"
    return f"{message}; expected one of: {', '.join(known)}"


def _closeness(
    key: str, name: str, matcher: difflib.SequenceMatcher[str], deeper: bool
) -> tuple[int, float] | None:
    """How `key` relates to `name` (lower is closer, then by difflib's ratio), or None."""
    if key == name:
        return (_EXACT, 0.0) if deeper else None
    if len(key) >= 2 and (name.startswith(key) or (len(key) >= 4 and name.startswith(key[:-1]))):
        return (_SHORTENED, 0.0)
    # Upper bounds first (as difflib.get_close_matches does): most names are far. The first
    # is real_quick_ratio's, from the lengths alone.
    if 2 * min(len(key), len(name)) < CLOSE_RATIO * (len(key) + len(name)):
        return _word(key, name)
    matcher.set_seq1(name)
    if matcher.quick_ratio() >= CLOSE_RATIO:
        ratio = matcher.ratio()
        if ratio >= CLOSE_RATIO:
            return (_MISSPELT, -ratio)
    return _word(key, name)


def _word(key: str, name: str) -> tuple[int, float] | None:
    if len(key) >= 3 and key in name.split("_"):
        return (_WORD, 0.0)
    return None
