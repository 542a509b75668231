"""The keyring: the one object that holds the master key and wraps/unwraps data keys with it.

Behind the ``Keyring`` interface so that another backend (PKCS#11, a cloud KMS) can replace the
passphrase-derived key without the service noticing.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.wrapping import unwrap_key, wrap_key


class Keyring(Protocol):
    def wrap(self, secret: bytes | bytearray, aad: bytes) -> bytes: ...
    def unwrap(self, blob: bytes, aad: bytes) -> bytearray: ...
    def close(self) -> None: ...


class PassphraseKeyring:
    """A master key derived from a passphrase, kept in a buffer that ``close`` overwrites.

    The AESGCM object keeps its own copy of the key inside OpenSSL, which Python cannot reach;
    the README's security notes say what that means.
    """

    def __init__(self, master_key: bytearray) -> None:
        self._master_key = master_key
        self._aead: AESGCM | None = AESGCM(bytes(master_key))

    def __repr__(self) -> str:
        return f"PassphraseKeyring(open={self._aead is not None})"

    def _master(self) -> AESGCM:
        if self._aead is None:
            raise RuntimeError("the keyring is closed")
        return self._aead

    def wrap(self, secret: bytes | bytearray, aad: bytes) -> bytes:
        return wrap_key(self._master(), secret, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytearray:
        return unwrap_key(self._master(), blob, aad)

    def close(self) -> None:
        zeroise(self._master_key)
        self._aead = None


def zeroise(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))
