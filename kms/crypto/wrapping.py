"""Key wrapping: AES-256-GCM with a fresh 96-bit nonce per wrap.

Wrapped blob: ``format (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)``.
The associated data binds the blob to its identity, so a blob copied to another row, key, version,
purpose, algorithm or incarnation fails to unwrap.

- Format 4 (written since root secrets): the AAD binds what format 3 binds, and the key is the
  wrapping key, ``HKDF-SHA256(root secret, info = "kms/wrapping/v4")``
  (kms.service.keyring), never the root secret itself. The AAD's label differs from format 3's,
  so flipping the format byte only makes the unwrap fail.
- Formats 1 to 3 were encrypted under the root secret itself (the passphrase-derived master
  key of keystores made before format 4); they still unwrap under it (``legacy``), until
  ``kms rekey`` re-wraps them in format 4.
- Format 3 (written since keystore binding): the AAD binds what format 2 binds and the
  keystore's id, so a blob copied from another keystore that shares the master key (a restored
  copy) never unwraps.
- Format 2 (the row-MAC release up to keystore binding): the AAD binds key_id, version,
  purpose, algorithm and the key's incarnation, so material from before a ``recreate`` never
  unwraps after it.
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
WRAP_FORMAT_V3 = b"\x03"
WRAP_FORMAT_V4 = b"\x04"
WRAP_FORMATS = (WRAP_FORMAT_V1, WRAP_FORMAT_V2, WRAP_FORMAT_V3, WRAP_FORMAT_V4)
#: Formats encrypted under the root secret itself, before the wrapping key was derived from it.
LEGACY_WRAP_FORMATS = (WRAP_FORMAT_V1, WRAP_FORMAT_V2, WRAP_FORMAT_V3)
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

    def aad(self, blob_format: bytes = WRAP_FORMAT_V4, keystore_id: bytes = b"") -> bytes:
        """The AAD of a blob of ``blob_format``; formats 3 and 4 need the ``keystore_id``."""
        if blob_format in (WRAP_FORMAT_V3, WRAP_FORMAT_V4):
            if not keystore_id:
                raise ValueError(f"a format-{blob_format[0]} wrap needs the keystore id")
            label = (
                b"kms/wrapped-key/v4" if blob_format == WRAP_FORMAT_V4 else b"kms/wrapped-key/v3"
            )
            return encode_aad(
                label,
                keystore_id,
                self.key_id,
                self.version,
                self.purpose,
                self.algorithm,
                self.incarnation,
            )
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


def wrap_key(
    wrapping: AESGCM, secret: bytes | bytearray, aad: bytes | KeyIdentity, keystore_id: bytes = b""
) -> bytes:
    """Wrap in format 4 under the wrapping key; ``aad`` is a ``KeyIdentity`` (bound to
    ``keystore_id``) or a label of its own (the init marker's)."""
    if isinstance(aad, KeyIdentity):
        aad = aad.aad(WRAP_FORMAT_V4, keystore_id)
    nonce = os.urandom(NONCE_BYTES)
    return WRAP_FORMAT_V4 + nonce + wrapping.encrypt(nonce, secret, aad)


def unwrap_key(
    wrapping: AESGCM,
    blob: bytes,
    aad: bytes | KeyIdentity,
    keystore_id: bytes = b"",
    legacy: AESGCM | None = None,
) -> bytearray:
    """Unwrap a blob of any format: format 4 under ``wrapping``, formats 1 to 3 under ``legacy``
    (the root secret itself; without it they fail).

    Given a ``KeyIdentity``, the AAD follows the blob's format byte (the AADs differ, so
    flipping that byte only makes the unwrap fail); given bytes, they are the AAD whatever the
    format byte says.
    """
    blob_format = blob[:1]
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob_format not in WRAP_FORMATS:
        raise UnwrapFailed()
    key = legacy if blob_format in LEGACY_WRAP_FORMATS else wrapping
    if key is None:
        raise UnwrapFailed()
    if isinstance(aad, KeyIdentity):
        if blob_format in (WRAP_FORMAT_V3, WRAP_FORMAT_V4) and not keystore_id:
            raise UnwrapFailed()
        aad = aad.aad(blob_format, keystore_id)
    nonce = blob[1 : 1 + NONCE_BYTES]
    try:
        return bytearray(key.decrypt(nonce, blob[1 + NONCE_BYTES :], aad))
    except InvalidTag as exc:
        raise UnwrapFailed() from exc
