"""The keyring: the one object that holds the master key and what is derived from it.

It wraps and unwraps data keys with the master key, and tags and verifies stored rows with the
row-MAC key (HKDF of the master key, never the wrapping key itself). Opened on a keystore, it
knows the keystore's id and binds every wrap (format 3) and every row MAC (format 2) to it
(kms.crypto.wrapping, kms.crypto.integrity). Behind the ``Keyring``
interface so that another backend (PKCS#11, a cloud KMS) can replace the passphrase-derived key
without the service noticing.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.integrity import BACKUP_KEY_INFO, RecordMAC, derive_mac_key, keystore_binding
from kms.crypto.stream import BACKUP_ENCRYPTION_INFO, derive_stream_key
from kms.crypto.wrapping import KeyIdentity, unwrap_key, wrap_key


class Keyring(Protocol):
    keystore_id: bytes

    def wrap(self, secret: bytes | bytearray, aad: bytes | KeyIdentity) -> bytes: ...
    def unwrap(self, blob: bytes, aad: bytes | KeyIdentity) -> bytearray: ...
    def tag(self, encoded: bytes) -> bytes: ...
    def verify_tag(self, encoded: bytes, stored: bytes | None, what: str) -> None: ...
    def verify_legacy_tag(self, encoded: bytes, stored: bytes | None, what: str) -> None: ...
    def backup_mac(self) -> RecordMAC: ...
    def backup_cipher(self, salt: bytes) -> AESGCM: ...
    def close(self) -> None: ...


class PassphraseKeyring:
    """A master key derived from a passphrase, kept in a buffer that ``close`` overwrites.

    The AESGCM object and the HMAC context keep their own copies of their keys inside OpenSSL,
    which Python cannot reach; docs/security.md (Security notes) lists every copy.
    """

    def __init__(self, master_key: bytearray, keystore_id: bytes = b"") -> None:
        """``keystore_id`` is empty only until the keystore is known (the init marker is
        checked first) and for a keystore made before keystore binding (``kms upgrade``): then
        rows can be verified with ``verify_legacy_tag`` only, and nothing can be tagged."""
        self._master_key = master_key
        self.keystore_id = keystore_id
        # AESGCM and HKDF take the bytearray itself: no immutable copy of the master key.
        self._aead: AESGCM | None = AESGCM(master_key)
        mac_key = derive_mac_key(master_key)
        try:
            self._legacy_mac = RecordMAC(mac_key)
            self._mac = RecordMAC(mac_key, keystore_id) if keystore_id else None
        finally:
            zeroise(mac_key)

    def __repr__(self) -> str:
        return f"PassphraseKeyring(open={self._aead is not None})"

    def _master(self) -> AESGCM:
        if self._aead is None:
            raise RuntimeError("the keyring is closed")
        return self._aead

    def wrap(self, secret: bytes | bytearray, aad: bytes | KeyIdentity) -> bytes:
        return wrap_key(self._master(), secret, aad, self.keystore_id)

    def unwrap(self, blob: bytes, aad: bytes | KeyIdentity) -> bytearray:
        return unwrap_key(self._master(), blob, aad, self.keystore_id)

    def _bound(self) -> RecordMAC:
        if self._mac is None:
            raise RuntimeError("the keyring knows no keystore id: it cannot tag rows")
        return self._mac

    def tag(self, encoded: bytes) -> bytes:
        """A format-2 tag, bound to this keystore."""
        return self._bound().tag(encoded)

    def verify_tag(self, encoded: bytes, stored: bytes | None, what: str) -> None:
        """Raise ``IntegrityFailure`` unless ``stored`` is this keystore's format-2 tag."""
        self._bound().verify(encoded, stored, what)

    def verify_legacy_tag(self, encoded: bytes, stored: bytes | None, what: str) -> None:
        """The same for a format-1 tag: ``kms upgrade`` only, before it writes format 2."""
        self._legacy_mac.verify(encoded, stored, what)

    def backup_mac(self) -> RecordMAC:
        """An HMAC under the backup key (HKDF of the master key, ``kms/backup/v1``), bound to
        the keystore id; the caller closes it."""
        self._master()
        backup_key = derive_mac_key(self._master_key, BACKUP_KEY_INFO)
        try:
            return RecordMAC(backup_key, self.keystore_id or None)
        finally:
            zeroise(backup_key)

    def backup_cipher(self, salt: bytes) -> AESGCM:
        """The AEAD of one backup file (kms.crypto.stream): HKDF of the master key with the
        file's own ``salt``, info ``kms/backup-encryption/v1`` and the keystore's binding."""
        self._master()
        info = BACKUP_ENCRYPTION_INFO + keystore_binding(self.keystore_id)
        return derive_stream_key(self._master_key, salt, info)

    def bound_to(self, keystore_id: bytes) -> PassphraseKeyring:
        """A keyring with this one's master key (a copy of its own) for the keystore
        ``keystore_id``: ``kms upgrade`` binding a keystore that had no id."""
        return PassphraseKeyring(bytearray(self._master_key), keystore_id)

    def close(self) -> None:
        zeroise(self._master_key)
        self._aead = None
        self._legacy_mac.close()
        if self._mac is not None:
            self._mac.close()


def zeroise(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))
