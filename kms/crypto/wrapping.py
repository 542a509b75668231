"""Key wrapping under the master key: AES-256-GCM with a fresh 96-bit nonce per wrap.

Wrapped blob: ``format (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)``.
The associated data binds the blob to its identity, so a blob copied to another row, key, version,
purpose, algorithm or incarnation fails to unwrap.

- Format 2 (written since the row-MAC release): the AAD binds key_id, version, purpose, algorithm
  and the key's incarnation, so material from before a ``recreate`` never unwraps after it.
- Format 1 (earlier releases): the AAD lacks the incarnation. Such blobs still unwrap, so upgraded
  databases keep working; each sits in a version row whose MAC covers the blob and the
  incarnation, which is what keeps a pre-recreate blob from being put back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.encoding import encode_aad
from kms.errors import UnwrapFailed

WRAP_FORMAT_V1 = b"\x01"
WRAP_FORMAT_V2 = b"\x02"
NONCE_BYTES = 12
TAG_BYTES = 16


@dataclass(frozen=True)
class KeyIdentity:
    """What a wrapped key is bound to."""

    key_id: str
    version: int
    purpose: str
    algorithm: str
    incarnation: str

    def aad(self, blob_format: bytes = WRAP_FORMAT_V2) -> bytes:
        if blob_format == WRAP_FORMAT_V1:
            return encode_aad(
                b"kms/wrapped-key/v1", self.key_id, self.version, self.purpose, self.algorithm
            )
        return encode_aad(
            b"kms/wrapped-key/v2",
            self.key_id,
            self.version,
            self.purpose,
            self.algorithm,
            self.incarnation,
        )


def wrap_key(master: AESGCM, secret: bytes | bytearray, aad: bytes) -> bytes:
    """Wrap in format 2; ``aad`` is ``KeyIdentity.aad()`` or another format-2 label."""
    nonce = os.urandom(NONCE_BYTES)
    return WRAP_FORMAT_V2 + nonce + master.encrypt(nonce, secret, aad)


def unwrap_key(master: AESGCM, blob: bytes, aad: bytes | KeyIdentity) -> bytearray:
    """Unwrap a blob of either format.

    Given a ``KeyIdentity``, the AAD follows the blob's format byte (the two AADs differ, so
    flipping that byte only makes the unwrap fail); given bytes, they are the AAD whatever the
    format byte says.
    """
    blob_format = blob[:1]
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob_format not in (
        WRAP_FORMAT_V1,
        WRAP_FORMAT_V2,
    ):
        raise UnwrapFailed()
    if isinstance(aad, KeyIdentity):
        aad = aad.aad(blob_format)
    nonce = blob[1 : 1 + NONCE_BYTES]
    try:
        return bytearray(master.decrypt(nonce, blob[1 + NONCE_BYTES :], aad))
    except InvalidTag as exc:
        raise UnwrapFailed() from exc
