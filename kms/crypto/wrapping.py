"""Key wrapping under the master key: AES-256-GCM with a fresh 96-bit nonce per wrap.

Wrapped blob (version 1): ``0x01 || nonce (12 bytes) || ciphertext || tag (16 bytes)``.
The associated data binds the blob to its identity, so a blob copied to another row, key, version,
purpose or algorithm fails to unwrap.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.encoding import encode_aad
from kms.errors import UnwrapFailed

WRAP_FORMAT_V1 = b"\x01"
NONCE_BYTES = 12
TAG_BYTES = 16


def key_identity_aad(key_id: str, version: int, purpose: str, algorithm: str) -> bytes:
    return encode_aad(b"kms/wrapped-key/v1", key_id, version, purpose, algorithm)


def wrap_key(master: AESGCM, secret: bytes | bytearray, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return WRAP_FORMAT_V1 + nonce + master.encrypt(nonce, bytes(secret), aad)


def unwrap_key(master: AESGCM, blob: bytes, aad: bytes) -> bytearray:
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[:1] != WRAP_FORMAT_V1:
        raise UnwrapFailed()
    nonce = blob[1 : 1 + NONCE_BYTES]
    try:
        return bytearray(master.decrypt(nonce, blob[1 + NONCE_BYTES :], aad))
    except InvalidTag as exc:
        raise UnwrapFailed() from exc
