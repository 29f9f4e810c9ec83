"""Names people read: datasets, federations, users and category values.

A name is shown in the dashboard, the audit log, CSV headers and answers, so it must look like
what it is. Refused: leading or trailing whitespace; control characters (newline, NUL, tab);
format characters, which include the bidi overrides and isolates (U+202A-U+202E,
U+2066-U+2069, LRM/RLM) and the zero-width ones (U+200B-U+200D, U+2060, U+FEFF); line and
paragraph separators; surrogates, private-use and unassigned code points. Names are
normalised to NFC; :func:`fold` (NFKC + case-folding) finds look-alike collisions
("Age" / "age", "ﬁle" / "file").
"""

from __future__ import annotations

import unicodedata

from .errors import InvalidRequest

# Cc control, Cf format (bidi + zero-width), Cs surrogate, Co private use, Cn unassigned,
# Zl/Zp line/paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def name_problem(value: str) -> str | None:
    """Why `value` is not an acceptable name, or None. (Checks characters, not length.)"""
    if not value:
        return "must not be empty"
    if value != value.strip():
        return "must not start or end with whitespace"
    if value.isascii() and value.isprintable():
        return None  # the common case, decided in C
    for position, char in enumerate(value):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return (f"must not contain U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')}) "
                    f"at position {position}: control, bidi, zero-width and unassigned "
                    "characters are refused")
    return None


def normal_name(value: str) -> str:
    return unicodedata.normalize("NFC", value)


def fold(value: str) -> str:
    """The key under which two names look alike: NFKC, then case-folded."""
    return unicodedata.normalize("NFKC", value).casefold()


def checked_name(value: str, field: str) -> str:
    """`value` in NFC, or InvalidRequest (422) naming `field` and the problem."""
    problem = name_problem(value)
    if problem:
        raise InvalidRequest(f"{field} {problem}", {field: [problem]})
    return normal_name(value)
