"""Unambiguous encoding of associated data.

Each field is UTF-8 (or raw bytes) prefixed by its length as a 4-byte big-endian integer, after a
fixed label that names the purpose of the AAD. Length prefixes mean no choice of key_id can make two
different identities encode to the same bytes (``"a" + "bc"`` vs ``"ab" + "c"``).
"""

from __future__ import annotations

import struct


def encode_aad(label: bytes, *fields: str | bytes | int) -> bytes:
    parts = [label]
    for field in fields:
        if isinstance(field, int):
            raw = str(field).encode("ascii")
        elif isinstance(field, str):
            raw = field.encode("utf-8")
        else:
            raw = bytes(field)
        parts.append(struct.pack(">I", len(raw)))
        parts.append(raw)
    return b"".join(parts)
