"""The keyring: the one object that holds the master key and what is derived from it.

It wraps and unwraps data keys with the master key, and tags and verifies stored rows with the
row-MAC key (HKDF of the master key, never the wrapping key itself). Behind the ``Keyring``
interface so that another backend (PKCS#11, a cloud KMS) can replace the passphrase-derived key
without the service noticing.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.integrity import BACKUP_KEY_INFO, RecordMAC, derive_mac_key
from kms.crypto.wrapping import KeyIdentity, unwrap_key, wrap_key


class Keyring(Protocol):
    def wrap(self, secret: bytes | bytearray, aad: bytes) -> bytes: ...
    def unwrap(self, blob: bytes, aad: bytes | KeyIdentity) -> bytearray: ...
    def tag(self, encoded: bytes) -> bytes: ...
    def verify_tag(self, encoded: bytes, stored: bytes | None, what: str) -> None: ...
    def backup_mac(self) -> RecordMAC: ...
    def close(self) -> None: ...


class PassphraseKeyring:
    """A master key derived from a passphrase, kept in a buffer that ``close`` overwrites.

    The AESGCM object and the HMAC context keep their own copies of their keys inside OpenSSL,
    which Python cannot reach; docs/security.md (Security notes) lists every copy.
    """

    def __init__(self, master_key: bytearray) -> None:
        self._master_key = master_key
        # AESGCM and HKDF take the bytearray itself: no immutable copy of the master key.
        self._aead: AESGCM | None = AESGCM(master_key)
        mac_key = derive_mac_key(master_key)
        try:
            self._mac = RecordMAC(mac_key)
        finally:
            zeroise(mac_key)

    def __repr__(self) -> str:
        return f"PassphraseKeyring(open={self._aead is not None})"

    def _master(self) -> AESGCM:
        if self._aead is None:
            raise RuntimeError("the keyring is closed")
        return self._aead

    def wrap(self, secret: bytes | bytearray, aad: bytes) -> bytes:
        return wrap_key(self._master(), secret, aad)

    def unwrap(self, blob: bytes, aad: bytes | KeyIdentity) -> bytearray:
        return unwrap_key(self._master(), blob, aad)

    def tag(self, encoded: bytes) -> bytes:
        return self._mac.tag(encoded)

    def verify_tag(self, encoded: bytes, stored: bytes | None, what: str) -> None:
        self._mac.verify(encoded, stored, what)

    def backup_mac(self) -> RecordMAC:
        """An HMAC under the backup key (HKDF of the master key, ``kms/backup/v1``); the caller
        closes it."""
        self._master()
        backup_key = derive_mac_key(self._master_key, BACKUP_KEY_INFO)
        try:
            return RecordMAC(backup_key)
        finally:
            zeroise(backup_key)

    def close(self) -> None:
        zeroise(self._master_key)
        self._aead = None
        self._mac.close()


def zeroise(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))
