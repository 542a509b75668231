"""Master-key backends: what seals the keystore's root secret in the database and opens it once
at start. One small interface, ``MasterKeyBackend``; two backends, ``passphrase`` (here) and
``pkcs11`` (kms.service.pkcs11). Above the keyring (kms.service.keyring) nothing knows which
one is in use.

The sealed root secret is the ``root_secret`` row of ``kms_metadata``: its format byte names
the backend that sealed it, then what that backend stores:

- ``0x01`` passphrase: ``nonce (12) || AES-256-GCM(KEK, root secret, AAD)``, where the KEK is
  PBKDF2-HMAC-SHA256 of the passphrase with the ``kdf_parameters`` row (a fresh salt each
  time it is sealed);
- ``0x02`` pkcs11: ``nonce (12) || AES-256-GCM(the HSM's key, root secret, AAD)``, encrypted
  and decrypted inside the HSM (``C_Encrypt``/``C_Decrypt`` with ``CKM_AES_GCM``).

The AAD is ``encode_aad("kms/root-secret/v1", backend, keystore id)``: a sealed root secret
copied to another keystore, or relabelled as another backend's, does not open.

A keystore made before root secrets (keystore format 3 and older) has no such row: its root
secret is the PBKDF2 output itself (``legacy_root``), until ``kms upgrade`` seals it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.encoding import encode_aad
from kms.crypto.kdf import MIN_ITERATIONS, KDFParameters, derive_master_key
from kms.errors import KeystoreError, KeystoreTampered, NotInitialised, WrongPassphrase
from kms.service.keyring import ROOT_SECRET_BYTES, zeroise
from kms.store.records import KDF_PARAMETERS, ROOT_SECRET

SEALED_BY_PASSPHRASE = b"\x01"
SEALED_BY_PKCS11 = b"\x02"
BACKEND_OF_FORMAT = {SEALED_BY_PASSPHRASE: "passphrase", SEALED_BY_PKCS11: "pkcs11"}
NONCE_BYTES = 12
TAG_BYTES = 16
#: Format byte, nonce, the 32-byte root secret and the GCM tag.
SEALED_BYTES = 1 + NONCE_BYTES + ROOT_SECRET_BYTES + TAG_BYTES
BACKENDS = ("passphrase", "pkcs11")


def root_secret_aad(backend: str, keystore_id: bytes) -> bytes:
    return encode_aad(b"kms/root-secret/v1", backend, keystore_id)


class MasterKeyBackend(Protocol):
    """Seals and opens the root secret. ``rows`` are the keystore's ``kms_metadata`` rows."""

    #: ``passphrase`` or ``pkcs11``: the value of ``kms.master_key.backend``.
    name: str

    def seal(self, root_secret: bytearray, keystore_id: bytes) -> dict[str, bytes]:
        """The ``kms_metadata`` rows that keep ``root_secret`` sealed (``root_secret`` and
        whatever else this backend needs to open it)."""
        ...

    def unseal(self, rows: Mapping[str, bytes], keystore_id: bytes) -> bytearray:
        """The root secret, in a buffer the caller overwrites; raise a ``KeystoreError`` naming
        the cause when it does not open."""
        ...

    def legacy_root(self, rows: Mapping[str, bytes]) -> bytearray:
        """The root secret of a keystore made before root secrets (no ``root_secret`` row)."""
        ...

    def close(self) -> None: ...


#: The rows a backend may own; a backend that seals removes the others' (``kms rekey --to``).
BACKEND_ROWS = (ROOT_SECRET, KDF_PARAMETERS)


def sealed_rows(metadata: Mapping[str, bytes]) -> dict[str, bytes]:
    """The ``kms_metadata`` rows that seal the root secret (what a backup's header carries)."""
    return {row: metadata[row] for row in BACKEND_ROWS if row in metadata}


def sealed_body(rows: Mapping[str, bytes], backend: str) -> bytes:
    """The sealed root secret's nonce and ciphertext, once its format byte says ``backend``
    sealed it; otherwise a ``KeystoreError`` that says which backend did."""
    sealed = rows.get(ROOT_SECRET)
    if sealed is None:
        raise NotInitialised()
    found = BACKEND_OF_FORMAT.get(sealed[:1])
    if found is None or len(sealed) != SEALED_BYTES:
        raise KeystoreTampered("the sealed root secret (root_secret in kms_metadata) is malformed")
    if found != backend:
        raise KeystoreError(
            f"the keystore's root secret is sealed by the {found} backend, but "
            f"kms.master_key.backend is {backend}: set it to {found} (or run "
            f"`kms rekey --to {backend}` with the {found} backend)"
        )
    return sealed[1:]


class PassphraseBackend:
    """The root secret sealed under a key PBKDF2 derives from the passphrase.

    The passphrase buffer is this object's until ``close`` overwrites it.
    """

    name = "passphrase"

    def __init__(
        self,
        passphrase: bytearray,
        iterations: int = MIN_ITERATIONS,
        *,
        min_iterations: int = MIN_ITERATIONS,
    ) -> None:
        self._passphrase = passphrase
        self._iterations = iterations
        self._min_iterations = min_iterations

    def __repr__(self) -> str:
        return "PassphraseBackend()"

    def _kek(self, params: KDFParameters) -> AESGCM:
        kek = derive_master_key(self._passphrase, params)
        try:
            return AESGCM(kek)
        finally:
            zeroise(kek)

    def seal(self, root_secret: bytearray, keystore_id: bytes) -> dict[str, bytes]:
        params = KDFParameters.generate(self._iterations, min_iterations=self._min_iterations)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._kek(params).encrypt(
            nonce, root_secret, root_secret_aad(self.name, keystore_id)
        )
        return {
            KDF_PARAMETERS: params.encode(),
            ROOT_SECRET: SEALED_BY_PASSPHRASE + nonce + sealed,
        }

    def unseal(self, rows: Mapping[str, bytes], keystore_id: bytes) -> bytearray:
        body = sealed_body(rows, self.name)
        params = self._parameters(rows)
        try:
            return bytearray(
                self._kek(params).decrypt(
                    body[:NONCE_BYTES], body[NONCE_BYTES:], root_secret_aad(self.name, keystore_id)
                )
            )
        except InvalidTag:
            raise WrongPassphrase() from None

    def legacy_root(self, rows: Mapping[str, bytes]) -> bytearray:
        return derive_master_key(self._passphrase, self._parameters(rows))

    def _parameters(self, rows: Mapping[str, bytes]) -> KDFParameters:
        if KDF_PARAMETERS not in rows:
            raise NotInitialised()
        return KDFParameters.decode(rows[KDF_PARAMETERS], min_iterations=self._min_iterations)

    def close(self) -> None:
        zeroise(self._passphrase)
