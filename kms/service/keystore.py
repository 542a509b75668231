"""Initialising and opening the keystore: the salt, the KDF parameters and the init marker.

The init marker is 32 random bytes wrapped under the master key. Unwrapping it at startup proves
the passphrase is right before anything else happens; a wrong one fails the GCM tag check.
"""

from __future__ import annotations

import os

from kms.crypto.encoding import encode_aad
from kms.crypto.kdf import KDFParameters, derive_master_key
from kms.errors import AlreadyInitialised, NotInitialised, UnwrapFailed, WrongPassphrase
from kms.service.keyring import PassphraseKeyring, zeroise
from kms.store.repository import KeyRepository

INIT_MARKER_AAD = encode_aad(b"kms/init-marker/v1")


def initialise_keystore(repository: KeyRepository, passphrase: bytearray, iterations: int) -> None:
    """Create the KDF parameters and the init marker; refuse an initialised database."""
    ensure_not_initialised(repository)
    repository.initialise(*new_keystore(passphrase, iterations))


def new_keystore(passphrase: bytearray, iterations: int) -> tuple[str, bytes]:
    """Fresh KDF parameters (a new salt) and the init marker wrapped under the derived key,
    ready to be stored: ``(encoded KDF parameters, init marker)``."""
    params = KDFParameters.generate(iterations)
    keyring = PassphraseKeyring(derive_master_key(passphrase, params))
    try:
        marker = keyring.wrap(os.urandom(32), INIT_MARKER_AAD)
    finally:
        keyring.close()
    return params.encode(), marker


def ensure_not_initialised(repository: KeyRepository) -> None:
    try:
        repository.read_keystore()
    except NotInitialised:
        return
    raise AlreadyInitialised()


def open_keystore(repository: KeyRepository, passphrase: bytearray) -> PassphraseKeyring:
    """Derive the master key once and prove it on the init marker.

    Raises ``NotInitialised`` or ``WrongPassphrase``; the passphrase buffer is overwritten either
    way.
    """
    try:
        encoded_params, marker = repository.read_keystore()
        keyring = PassphraseKeyring(
            derive_master_key(passphrase, KDFParameters.decode(encoded_params))
        )
    finally:
        zeroise(passphrase)
    try:
        zeroise(keyring.unwrap(marker, INIT_MARKER_AAD))
    except UnwrapFailed:
        keyring.close()
        raise WrongPassphrase() from None
    return keyring
