"""Key-id globs (``fnmatch``, case-sensitive: the policy's ``keys`` patterns) as SQL conditions.

A glob becomes ``key_id LIKE <pattern> ESCAPE '\\'``: ``*`` is ``%``, ``?`` is ``_``, and a
literal ``%``, ``_`` or ``\\`` is escaped. A set (``[abc]``, ``[!a-z]``) becomes ``_``, any one
character: the condition then admits more than the glob, and the caller filters what comes back
with ``fnmatchcase`` (``SQLPattern.exact`` says whether it must). A ``[`` that opens no set (no
closing ``]``) is literal, as in ``fnmatch``.

LIKE is case-sensitive on PostgreSQL, and on SQLite because every kms connection sets
``PRAGMA case_sensitive_like`` (kms.store.db). The literal prefix (everything before the first
``*``, ``?`` or a set) is also given as a range, ``prefix <= key_id < successor(prefix)``, which
an index in binary order answers by a seek: SQLite's primary key (text compares in binary
order there), and on PostgreSQL the index on ``key_id COLLATE "C"`` (migration 0005), which the
listing's comparisons name; in a linguistic collation strings sharing a prefix need not sort
together, so the range would not be exact there, and PostgreSQL uses no index for a LIKE in a
collation other than C.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The escape character of every LIKE built here.
ESCAPE = "\\"
_LIKE_SPECIAL = frozenset({"%", "_", ESCAPE})


@dataclass(frozen=True)
class SQLPattern:
    """A glob as SQL: the LIKE pattern, its literal prefix, and whether LIKE is exact."""

    like: str
    prefix: str
    exact: bool

    @property
    def everything(self) -> bool:
        """Matches every key_id (``*``, ``**``...)."""
        return self.like == "%"


def glob_to_like(glob: str) -> SQLPattern:
    """Translate one ``fnmatch`` glob; see the module's docstring for the rules."""
    like: list[str] = []
    prefix: list[str] = []
    exact = True
    in_prefix = True
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            if not like or like[-1] != "%":  # fnmatch collapses runs of * too
                like.append("%")
            in_prefix = False
        elif c == "?":
            like.append("_")
            in_prefix = False
        elif c == "[" and (end := _set_end(glob, i)) is not None:
            like.append("_")
            exact = False
            in_prefix = False
            i = end + 1
        else:
            like.append(ESCAPE + c if c in _LIKE_SPECIAL else c)
            if in_prefix:
                prefix.append(c)
    return SQLPattern(like="".join(like), prefix="".join(prefix), exact=exact)


def _set_end(glob: str, start: int) -> int | None:
    """The index of the ``]`` closing the set whose ``[`` is just before ``start``, as
    ``fnmatch.translate`` finds it; None when there is none (the ``[`` is then literal)."""
    j = start
    if j < len(glob) and glob[j] == "!":
        j += 1
    if j < len(glob) and glob[j] == "]":
        j += 1
    while j < len(glob) and glob[j] != "]":
        j += 1
    return j if j < len(glob) else None


def successor(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (code point order, which
    is SQLite's BINARY order of their UTF-8); None when there is none."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            following = last + 1
            if 0xD800 <= following <= 0xDFFF:  # surrogates cannot be stored: skip them
                following = 0xE000
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None
