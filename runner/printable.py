"""Text from a VM file (or a file's name) made safe to print on a terminal or in a CI log.

A hostile VM file can put ESC sequences, carriage returns and newlines in its values and keys;
quoted raw in a message they would repaint the terminal or forge a second `FILE:LINE:COL`
line, and a Unicode bidi control or line separator would reorder or split what is shown.
Every message that quotes file content goes through `printable`, which writes such characters
as Python-style escapes (`\\x1b`, `\\u202e`), so one problem is always one visible line.
"""

from __future__ import annotations

import unicodedata

# Cc: C0 and C1 controls, DEL; Cf: format characters (bidi embeddings, overrides and isolates,
# zero-width characters); Cs: lone surrogates (a non-UTF-8 file name; printing one would fail);
# Zl, Zp: the line and paragraph separators, which some terminals and viewers break lines at.
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def needs_escape(char: str) -> bool:
    return unicodedata.category(char) in UNPRINTABLE_CATEGORIES


def escape_char(char: str) -> str:
    """One character as an escape that reads back as it in Python, TOML and JSON-ish text."""
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` with every control, format, surrogate and separator character escaped."""
    # The usual message has none: one C-level scan instead of a Python loop.
    if text.isprintable():
        return text
    return "".join(escape_char(c) if needs_escape(c) else c for c in text)


def printable_toml(text: str) -> str:
    """TOML text from tomli_w with what it leaves raw inside strings (tabs, C1 controls, bidi
    controls, line separators) written as TOML escapes: the same values when loaded, nothing
    a terminal acts on when shown. tomli_w writes only basic strings, and outside them only
    ASCII text and newlines, so every such character is inside a string."""
    if text.isascii() and "\t" not in text:
        return text
    return "".join(_toml_escape(c) if c != "\n" and needs_escape(c) else c for c in text)


def _toml_escape(char: str) -> str:
    if char == "\t":
        return "\\t"
    code = ord(char)  # TOML 1.0 has no \x escape
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
