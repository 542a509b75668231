"""The ciphertext wire format and its associated data.

``BASE64( "v<N>:" || nonce (12 bytes) || ciphertext || tag (16 bytes) )``: standard base64 with
padding, canonical (re-encoding the decoded bytes gives the same text). ``<N>`` is the decimal key
version: ASCII digits, no sign, no leading zero, 1 <= N <= 2**31 - 1. Anything else raises
``InvalidCiphertext``; nothing else escapes the parser.

RSA-OAEP keys use the same envelope around the raw OAEP ciphertext (``BASE64( "v<N>:" ||
oaep )``, see ``format_versioned``), so a client sees one ciphertext form for every encryption key;
a raw OAEP ciphertext made offline is read with ``parse_raw``.

The AEAD's associated data binds the key_id, the version and the caller's encryption context, so
a ciphertext cannot be replayed under another key or relabelled as another version.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from kms.crypto.encoding import encode_aad
from kms.errors import InvalidCiphertext

MAX_VERSION = 2**31 - 1
NONCE_BYTES = 12
TAG_BYTES = 16
# The version prefix is at most "v" + 10 digits + ":"; the regex never scans further.
_VERSION_PREFIX = re.compile(rb"v([1-9][0-9]{0,9}):")


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
