"""Initialising and opening the keystore: the salt, the KDF parameters and the init marker.

The init marker is 32 random bytes wrapped under the master key. Unwrapping it at startup proves
the passphrase is right before anything else happens; a wrong one fails the GCM tag check.

Its associated data also records whether the rows carry MACs. Databases made before row MACs
have a marker under ``INIT_MARKER_AAD_UNSEALED``; ``kms upgrade`` computes every row's MAC and
re-wraps the marker under ``INIT_MARKER_AAD`` in the same transaction. Nobody without the master
key can turn one marker into the other, so clearing the MACs cannot make kms seal rows again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kms.crypto.encoding import encode_aad
from kms.crypto.kdf import MIN_ITERATIONS, KDFParameters, derive_master_key
from kms.errors import (
    AlreadyInitialised,
    NotInitialised,
    UnwrapFailed,
    UpgradeNeeded,
    WrongPassphrase,
)
from kms.service.keyring import PassphraseKeyring, zeroise
from kms.store.records import KeyRepository

#: The marker of a keystore whose rows carry MACs.
INIT_MARKER_AAD = encode_aad(b"kms/init-marker/v2")
#: The marker of a keystore made before row MACs (kms up to 0.1.0), until `kms upgrade`.
INIT_MARKER_AAD_UNSEALED = encode_aad(b"kms/init-marker/v1")


def new_keystore(
    passphrase: bytearray, iterations: int, *, min_iterations: int = MIN_ITERATIONS
) -> tuple[bytes, bytes]:
    """Fresh KDF parameters (a new salt) and the init marker wrapped under the derived key,
    ready to be stored: ``(encoded KDF parameters, init marker)``."""
    params = KDFParameters.generate(iterations, min_iterations=min_iterations)
    keyring = PassphraseKeyring(derive_master_key(passphrase, params))
    try:
        marker = new_init_marker(keyring)
    finally:
        keyring.close()
    return params.encode(), marker


def new_master_key(
    passphrase: bytearray, iterations: int, *, min_iterations: int = MIN_ITERATIONS
) -> tuple[bytes, bytes, PassphraseKeyring]:
    """For ``kms rekey``: fresh KDF parameters (a new salt), the keyring derived from them and
    the passphrase, and an init marker under it. The caller closes the keyring."""
    params = KDFParameters.generate(iterations, min_iterations=min_iterations)
    keyring = PassphraseKeyring(derive_master_key(passphrase, params))
    try:
        return params.encode(), new_init_marker(keyring), keyring
    except BaseException:
        keyring.close()
        raise


def new_init_marker(keyring: PassphraseKeyring) -> bytes:
    return keyring.wrap(os.urandom(32), INIT_MARKER_AAD)


def ensure_not_initialised(repository: KeyRepository) -> None:
    try:
        repository.read_keystore()
    except NotInitialised:
        return
    raise AlreadyInitialised()


@dataclass(frozen=True)
class OpenedKeystore:
    keyring: PassphraseKeyring
    #: False for a database made before row MACs: only `kms upgrade` may use it.
    sealed: bool


def open_keystore(
    repository: KeyRepository,
    passphrase: bytearray,
    *,
    min_iterations: int = MIN_ITERATIONS,
    allow_unsealed: bool = False,
) -> OpenedKeystore:
    """Derive the master key once and prove it on the init marker.

    Raises ``NotInitialised``, ``InvalidKDFParameters``, ``WrongPassphrase`` or (an unsealed
    keystore, unless ``allow_unsealed``) ``UpgradeNeeded``; the passphrase buffer is overwritten
    either way.
    """
    try:
        encoded_params, marker = repository.read_keystore()
        params = KDFParameters.decode(encoded_params, min_iterations=min_iterations)
        keyring = PassphraseKeyring(derive_master_key(passphrase, params))
    finally:
        zeroise(passphrase)
    for aad, sealed in ((INIT_MARKER_AAD, True), (INIT_MARKER_AAD_UNSEALED, False)):
        try:
            zeroise(keyring.unwrap(marker, aad))
        except UnwrapFailed:
            continue
        if not sealed and not allow_unsealed:
            keyring.close()
            raise UpgradeNeeded()
        return OpenedKeystore(keyring, sealed)
    keyring.close()
    raise WrongPassphrase()
