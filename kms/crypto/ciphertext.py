"""The ciphertext wire format and its associated data.

``BASE64( "v<N>:" || nonce (12 bytes) || ciphertext || tag (16 bytes) )``: standard base64 with
padding, canonical (re-encoding the decoded bytes gives the same text). ``<N>`` is the decimal key
version: ASCII digits, no sign, no leading zero, 1 <= N <= 2**31 - 1. Anything else raises
``InvalidCiphertext``; nothing else escapes the parser.

RSA-OAEP keys use the same envelope around the raw OAEP ciphertext (``BASE64( "v<N>:" ||
oaep )``, see ``format_versioned``), so a client sees one ciphertext form for every encryption key;
a raw OAEP ciphertext made offline is read with ``parse_raw``.

The AEAD's associated data binds the key_id, the version and the caller's encryption context, so
a ciphertext cannot be replayed under another key, relabelled as another version, or opened
under another context (docs/api.md, "Encryption context"):

``AAD = "kms/ciphertext/v1" || u32(len(key_id)) || key_id || u32(len(V)) || V
|| u32(len(C)) || C``, where ``u32`` is a 4-byte big-endian length, ``key_id`` is UTF-8, ``V``
the version in ASCII decimal, and ``C`` the context's canonical encoding (``encode_context``).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from kms.crypto.encoding import encode_aad
from kms.errors import InvalidCiphertext, InvalidRequest

MAX_VERSION = 2**31 - 1
NONCE_BYTES = 12
TAG_BYTES = 16
# The version prefix is at most "v" + 10 digits + ":"; the regex never scans further.
_VERSION_PREFIX = re.compile(rb"v([1-9][0-9]{0,9}):")
#: An encryption context holds at most this many pairs ...
MAX_CONTEXT_PAIRS = 64
#: ... and its canonical encoding at most this many bytes.
MAX_CONTEXT_BYTES = 4096


@dataclass(frozen=True)
class ParsedCiphertext:
    version: int
    nonce: bytes
    sealed: bytes  # ciphertext || tag


def format_ciphertext(version: int, nonce: bytes, sealed: bytes) -> str:
    if not 1 <= version <= MAX_VERSION:
        raise ValueError("version out of range")
    raw = b"v%d:" % version + nonce + sealed
    return base64.b64encode(raw).decode("ascii")


def format_versioned(version: int, body: bytes) -> str:
    """``BASE64( "v<N>:" || body )``: the envelope of an RSA-OAEP ciphertext."""
    if not 1 <= version <= MAX_VERSION:
        raise ValueError("version out of range")
    return base64.b64encode(b"v%d:" % version + body).decode("ascii")


def parse_raw(text: str) -> bytes:
    """Canonical standard base64 to bytes; anything else raises ``InvalidCiphertext``."""
    if not isinstance(text, str) or not text.isascii():
        raise InvalidCiphertext()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCiphertext() from exc
    # validate=True still accepts non-canonical padding bits; only one spelling is allowed.
    if base64.b64encode(raw).decode("ascii") != text:
        raise InvalidCiphertext()
    return raw


def parse_versioned(text: str) -> tuple[int, bytes]:
    """Split ``BASE64( "v<N>:" || body )`` into ``(N, body)``; raise ``InvalidCiphertext``."""
    raw = parse_raw(text)
    match = _VERSION_PREFIX.match(raw)
    if match is None:
        raise InvalidCiphertext()
    version = int(match.group(1))
    if version > MAX_VERSION:
        raise InvalidCiphertext()
    return version, raw[match.end() :]


def parse_ciphertext(text: str) -> ParsedCiphertext:
    version, body = parse_versioned(text)
    if len(body) < NONCE_BYTES + TAG_BYTES:
        raise InvalidCiphertext()
    return ParsedCiphertext(version=version, nonce=body[:NONCE_BYTES], sealed=body[NONCE_BYTES:])


def ciphertext_aad(key_id: str, version: int, context: bytes = b"") -> bytes:
    return encode_aad(b"kms/ciphertext/v1", key_id, version, context)


def encode_context(context: Mapping[str, str] | None) -> bytes:
    """The canonical encoding of an encryption context, the ``C`` of the ciphertext's AAD.

    Pairs sorted by key (by the key's UTF-8 bytes, which is Unicode code point order), each
    ``u32(len(key)) || key || u32(len(value)) || value``: UTF-8, 4-byte big-endian lengths, no
    separators, no pair count. The length prefixes make it injective (no two contexts encode
    alike), sorting makes it independent of the order the pairs were sent in, and no context
    (``None``) and the empty context both encode to zero bytes, the AAD of a ciphertext made
    without one. Raises ``InvalidRequest`` over MAX_CONTEXT_PAIRS pairs or MAX_CONTEXT_BYTES
    bytes; the messages never quote the context.
    """
    if not context:
        return b""
    if len(context) > MAX_CONTEXT_PAIRS:
        raise InvalidRequest(f"context: at most {MAX_CONTEXT_PAIRS} pairs")
    try:
        pairs = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in context.items())
    except (AttributeError, UnicodeEncodeError):  # not a str, or a lone surrogate
        raise InvalidRequest("context: keys and values must be strings") from None
    parts: list[bytes] = []
    size = 0
    for key, value in pairs:
        for field in (key, value):
            size += 4 + len(field)
            parts.append(struct.pack(">I", len(field)))
            parts.append(field)
        if size > MAX_CONTEXT_BYTES:
            raise InvalidRequest(
                f"context: at most {MAX_CONTEXT_BYTES} bytes in its canonical encoding"
            )
    return b"".join(parts)
