"""unwrap_key at the edges of the blob format: every malformed blob is ``UnwrapFailed``.

A blob comes from the database, which an attacker with file access can edit; a length the code
did not expect must not escape as another exception (a 500 instead of the one refusal).
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.wrapping import KeyIdentity, unwrap_key, wrap_key
from kms.errors import UnwrapFailed

MASTER = AESGCM(bytes(range(32)))
AAD = KeyIdentity("k", 1, "encrypt", "AES-256-GCM", "0" * 32).aad(keystore_id=b"i" * 16)


@pytest.mark.parametrize("length", range(0, 30))
def test_short_or_garbage_blobs_are_refused_with_unwrap_failed(length: int) -> None:
    for first in (b"\x01", b"\x02", b"\x03", b"\x04"):
        blob = (first + os.urandom(length))[:length]
        with pytest.raises(UnwrapFailed):
            unwrap_key(MASTER, blob, AAD, legacy=MASTER)


def test_the_shortest_valid_blob_wraps_nothing() -> None:
    """version byte + 12-byte nonce + 16-byte tag: 29 bytes, an empty secret; the edge of the
    length check."""
    blob = wrap_key(MASTER, b"", AAD)
    assert len(blob) == 29
    assert blob[:1] == b"\x04"
    assert unwrap_key(MASTER, blob, AAD) == bytearray()


def test_a_blob_of_another_format_version_is_refused() -> None:
    blob = wrap_key(MASTER, b"\x07" * 32, AAD)
    assert unwrap_key(MASTER, blob, AAD) == bytearray(b"\x07" * 32)
    for other in (b"\x05", b"\x00", b"\xff"):
        with pytest.raises(UnwrapFailed):
            unwrap_key(MASTER, other + blob[1:], AAD, legacy=MASTER)
