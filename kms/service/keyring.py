"""The keyring: the one object that holds the keystore's root secret and what is derived from it.

The root secret is 32 bytes at the top of kms's own key hierarchy. A master-key backend
(kms.service.backends: ``passphrase`` or ``pkcs11``) keeps it sealed in the database and opens
it once at start; from then on only this keyring holds it, and nothing above the keyring knows
which backend opened it. Every use of it is a sub-key of its own, ``derive_key(label)``
(HKDF-SHA256, kms.crypto.kdf), one label per use:

- ``kms/wrapping/v4``: the wrapping key of data keys and of the init marker (wrap format 4);
- ``kms/row-mac/v1``: the row-MAC key (kms.crypto.integrity);
- ``kms/backup/v1``: the backup key (kms.service.backup);
- ``kms/audit/v1`` and the keystore id: the audit chain's key (kms.audit);
- ``kms/backup-encryption/v1``, with each file's salt: a backup file's key (kms.crypto.stream).

A keystore made before format 4 has, as its root secret, the key PBKDF2 derived from its
passphrase, which it used directly to wrap (wrap formats 1 to 3): those blobs still unwrap under
it. Opened on a keystore, the keyring knows the keystore's id and binds every wrap and every
row MAC (format 2) to it (kms.crypto.wrapping, kms.crypto.integrity).
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.integrity import (
    AUDIT_KEY_INFO,
    BACKUP_KEY_INFO,
    MAC_KEY_INFO,
    RecordMAC,
    keystore_binding,
)
from kms.crypto.kdf import derive_key
from kms.crypto.stream import BACKUP_ENCRYPTION_INFO, derive_stream_key
from kms.crypto.wrapping import KeyIdentity, unwrap_key, wrap_key

#: The label of the wrapping key (wrap format 4).
WRAPPING_KEY_INFO = b"kms/wrapping/v4"
ROOT_SECRET_BYTES = 32


class Keyring(Protocol):
    keystore_id: bytes
    #: The master-key backend that opened the root secret, and when (Unix time; None: not
    #: opened by ``open_master_keyring``). Reported by /readyz and /metrics.
    backend: str
    opened_at: float | None

    def wrap(self, secret: bytes | bytearray, aad: bytes | KeyIdentity) -> bytes: ...
    def unwrap(self, blob: bytes, aad: bytes | KeyIdentity) -> bytearray: ...
    def tag(self, encoded: bytes) -> bytes: ...
    def verify_tag(self, encoded: bytes, stored: bytes | None, what: str) -> None: ...
    def verify_legacy_tag(self, encoded: bytes, stored: bytes | None, what: str) -> None: ...
    def backup_mac(self) -> RecordMAC: ...
    def audit_key(self) -> bytearray: ...
    def backup_cipher(self, salt: bytes) -> AESGCM: ...
    def close(self) -> None: ...


class RootKeyring:
    """The root secret, in a buffer that ``close`` overwrites, and the keys derived from it.

    The AESGCM objects and the HMAC contexts keep their own copies of their keys inside OpenSSL,
    which Python cannot reach; docs/security.md (Security notes) lists every copy.
    """

    def __init__(self, root_secret: bytearray, keystore_id: bytes = b"") -> None:
        """``keystore_id`` is empty only until the keystore is known (the init marker is
        checked first) and for a keystore made before keystore binding (``kms upgrade``): then
        rows can be verified with ``verify_legacy_tag`` only, and nothing can be tagged."""
        self._root_secret = root_secret
        self.keystore_id = keystore_id
        self.backend = "passphrase"
        self.opened_at: float | None = None
        #: How long the backend took to open the root secret and prove it on the init marker
        #: (library, login and unseal for pkcs11; PBKDF2 and unseal for passphrase).
        self.open_seconds: float | None = None
        # AESGCM and HKDF take the bytearray itself: no immutable copy of the root secret.
        self._legacy: AESGCM | None = AESGCM(root_secret)
        wrapping_key = derive_key(root_secret, WRAPPING_KEY_INFO)
        mac_key = derive_key(root_secret, MAC_KEY_INFO)
        try:
            self._aead: AESGCM | None = AESGCM(wrapping_key)
            self._legacy_mac = RecordMAC(mac_key)
            self._mac = RecordMAC(mac_key, keystore_id) if keystore_id else None
        finally:
            zeroise(wrapping_key)
            zeroise(mac_key)

    def __repr__(self) -> str:
        return f"RootKeyring(open={self._aead is not None})"

    def _wrapping(self) -> AESGCM:
        if self._aead is None:
            raise RuntimeError("the keyring is closed")
        return self._aead

    def derive_key(self, label: bytes) -> bytearray:
        """The sub-key of the root secret for ``label`` (HKDF-SHA256), in a buffer the caller
        overwrites when done. Each use of the root secret has a label of its own."""
        self._wrapping()
        return derive_key(self._root_secret, label)

    def wrap(self, secret: bytes | bytearray, aad: bytes | KeyIdentity) -> bytes:
        """Wrap in format 4, under the wrapping key."""
        return wrap_key(self._wrapping(), secret, aad, self.keystore_id)

    def unwrap(self, blob: bytes, aad: bytes | KeyIdentity) -> bytearray:
        """Unwrap format 4 under the wrapping key, formats 1 to 3 under the root secret."""
        return unwrap_key(self._wrapping(), blob, aad, self.keystore_id, self._legacy)

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
        """An HMAC under the backup key (``kms/backup/v1``), bound to the keystore id; the
        caller closes it."""
        backup_key = self.derive_key(BACKUP_KEY_INFO)
        try:
            return RecordMAC(backup_key, self.keystore_id or None)
        finally:
            zeroise(backup_key)

    def backup_cipher(self, salt: bytes) -> AESGCM:
        """The AEAD of one backup file (kms.crypto.stream): HKDF of the root secret with the
        file's own ``salt``, info ``kms/backup-encryption/v1`` and the keystore's binding."""
        self._wrapping()
        info = BACKUP_ENCRYPTION_INFO + keystore_binding(self.keystore_id)
        return derive_stream_key(self._root_secret, salt, info)

    def audit_key(self) -> bytearray:
        """The audit log's HMAC key (kms.audit): the root secret's sub-key for ``kms/audit/v1``
        followed by the keystore id, so each keystore's log has a key of its own; the caller
        overwrites it when done."""
        if not self.keystore_id:
            raise RuntimeError("the keyring knows no keystore id: it has no audit key")
        return self.derive_key(AUDIT_KEY_INFO + self.keystore_id)

    def bound_to(self, keystore_id: bytes) -> RootKeyring:
        """A keyring with this one's root secret (a copy of its own) for the keystore
        ``keystore_id``: ``kms upgrade`` binding a keystore that had no id."""
        return RootKeyring(bytearray(self._root_secret), keystore_id)

    def root_secret(self) -> bytearray:
        """A copy of the root secret, for a backend to seal (``kms init``, ``kms upgrade``,
        ``kms rekey``); the caller overwrites it."""
        self._wrapping()
        return bytearray(self._root_secret)

    def close(self) -> None:
        zeroise(self._root_secret)
        self._aead = None
        self._legacy = None
        self._legacy_mac.close()
        if self._mac is not None:
            self._mac.close()


def zeroise(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))
