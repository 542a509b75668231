"""Initialising and opening the keystore: the salt, the KDF parameters, the init marker, the
keystore id and the epoch.

The init marker is 32 random bytes wrapped under the master key. Unwrapping it at startup proves
the passphrase is right before anything else happens; a wrong one fails the GCM tag check.

Its associated data also records the keystore's format, which says what the rows must carry:

1. ``kms/init-marker/v1``: made before row MACs (kms 0.1.0); no row carries a MAC.
2. ``kms/init-marker/v2``: rows carry format-1 MACs, bound to no keystore, and no generation.
3. ``kms/init-marker/v3`` with the keystore id: rows carry format-2 MACs bound to the keystore
   id (the ``keystore_id`` row, random at ``kms init``), key rows a generation, and the
   ``epoch`` row the keystore epoch (kms.service.integrity).

Only format 3 is served. ``kms upgrade`` brings the others to it in one transaction, having
verified every MAC there is first (kms.service.keys.maintenance). Nobody without the master key
can turn one marker into another; and an older marker put back on a keystore whose rows carry
MACs (or that has an id) is an integrity alarm, never an upgrade: ``kms upgrade`` would
otherwise seal whatever the rows hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum

from kms.crypto.encoding import encode_aad
from kms.crypto.kdf import MIN_ITERATIONS, KDFParameters, derive_master_key
from kms.errors import (
    AlreadyInitialised,
    KeystoreTampered,
    NotInitialised,
    UnwrapFailed,
    UpgradeNeeded,
    WrongPassphrase,
)
from kms.service.integrity import epoch_row
from kms.service.keyring import PassphraseKeyring, zeroise
from kms.store.records import EPOCH, INIT_MARKER, KDF_PARAMETERS, KEYSTORE_ID, KeyRepository

#: The marker of a keystore made before row MACs (kms up to 0.1.0), until `kms upgrade`.
INIT_MARKER_AAD_UNSEALED = encode_aad(b"kms/init-marker/v1")
#: The marker of a keystore whose rows carry format-1 MACs, until `kms upgrade`.
INIT_MARKER_AAD_UNBOUND = encode_aad(b"kms/init-marker/v2")
KEYSTORE_ID_BYTES = 16
#: The epoch of a new keystore, and of one `kms upgrade` brought to format 3.
FIRST_EPOCH = 1


class KeystoreFormat(IntEnum):
    UNSEALED = 1
    UNBOUND = 2
    CURRENT = 3


def init_marker_aad(keystore_id: bytes) -> bytes:
    """The marker's AAD in keystore format 3: bound to the keystore id."""
    return encode_aad(b"kms/init-marker/v3", keystore_id)


def new_keystore(
    passphrase: bytearray, iterations: int, *, min_iterations: int = MIN_ITERATIONS
) -> dict[str, bytes]:
    """The rows of a new keystore (``kms_metadata``): fresh KDF parameters (a new salt), a new
    keystore id, the init marker wrapped under the derived key, and the first epoch."""
    params = KDFParameters.generate(iterations, min_iterations=min_iterations)
    keyring = PassphraseKeyring(
        derive_master_key(passphrase, params), os.urandom(KEYSTORE_ID_BYTES)
    )
    try:
        return {KDF_PARAMETERS: params.encode(), **keystore_rows(keyring, FIRST_EPOCH)}
    finally:
        keyring.close()


def new_master_key(
    passphrase: bytearray,
    iterations: int,
    keystore_id: bytes,
    *,
    min_iterations: int = MIN_ITERATIONS,
) -> tuple[bytes, PassphraseKeyring]:
    """For ``kms rekey`` and ``kms restore --as-clone``: fresh KDF parameters (a new salt) and
    the keyring derived from them and the passphrase, for the keystore ``keystore_id``. The
    caller closes the keyring."""
    params = KDFParameters.generate(iterations, min_iterations=min_iterations)
    return params.encode(), PassphraseKeyring(derive_master_key(passphrase, params), keystore_id)


def keystore_rows(keyring: PassphraseKeyring, epoch: int) -> dict[str, bytes]:
    """The keystore id, a new init marker and the epoch row, under ``keyring``."""
    return {
        KEYSTORE_ID: keyring.keystore_id,
        INIT_MARKER: keyring.wrap(os.urandom(32), init_marker_aad(keyring.keystore_id)),
        EPOCH: epoch_row(keyring, epoch),
    }


def ensure_not_initialised(repository: KeyRepository) -> None:
    try:
        repository.read_keystore()
    except NotInitialised:
        return
    raise AlreadyInitialised()


@dataclass(frozen=True)
class OpenedKeystore:
    #: Knows the keystore id in format 3; in the older formats it knows none (`kms upgrade`).
    keyring: PassphraseKeyring
    format: KeystoreFormat
    #: The stored ``kms_metadata`` rows, as read when opened.
    rows: dict[str, bytes]

    @property
    def sealed(self) -> bool:
        return self.format is KeystoreFormat.CURRENT


def open_keystore(
    repository: KeyRepository,
    passphrase: bytearray,
    *,
    min_iterations: int = MIN_ITERATIONS,
    allow_old: bool = False,
) -> OpenedKeystore:
    """Derive the master key once and prove it on the init marker.

    Raises ``NotInitialised``, ``InvalidKDFParameters``, ``WrongPassphrase``,
    ``KeystoreTampered`` (an older marker on a keystore whose rows say it is newer) or (a
    keystore of an older format, unless ``allow_old``) ``UpgradeNeeded``; the passphrase buffer
    is overwritten either way.
    """
    try:
        rows = repository.read_metadata()
        if KDF_PARAMETERS not in rows or INIT_MARKER not in rows:
            raise NotInitialised()
        params = KDFParameters.decode(rows[KDF_PARAMETERS], min_iterations=min_iterations)
        master_key = derive_master_key(passphrase, params)
    finally:
        zeroise(passphrase)
    marker, keystore_id = rows[INIT_MARKER], rows.get(KEYSTORE_ID)
    if keystore_id:
        keyring = PassphraseKeyring(master_key, keystore_id)
        if _unwraps(keyring, marker, init_marker_aad(keystore_id)):
            return OpenedKeystore(keyring, KeystoreFormat.CURRENT, rows)
    else:
        keyring = PassphraseKeyring(master_key)
    found = None
    for aad, old_format in (
        (INIT_MARKER_AAD_UNBOUND, KeystoreFormat.UNBOUND),
        (INIT_MARKER_AAD_UNSEALED, KeystoreFormat.UNSEALED),
    ):
        if _unwraps(keyring, marker, aad):
            found = old_format
            break
    if found is None:
        keyring.close()
        raise WrongPassphrase()
    alarm = _newer_than(found, rows, repository)
    if alarm is not None:
        keyring.close()
        raise KeystoreTampered(
            f"the init marker is of keystore format {found.value}, but {alarm}: an older "
            "marker was put back; nothing was written (restore the database from a backup)"
        )
    if not allow_old:
        keyring.close()
        raise UpgradeNeeded()
    if keystore_id:  # an older marker and an id: _newer_than said so already
        raise AssertionError("unreachable")
    return OpenedKeystore(keyring, found, rows)


def _unwraps(keyring: PassphraseKeyring, marker: bytes, aad: bytes) -> bool:
    try:
        zeroise(keyring.unwrap(marker, aad))
    except UnwrapFailed:
        return False
    return True


def _newer_than(
    found: KeystoreFormat, rows: dict[str, bytes], repository: KeyRepository
) -> str | None:
    """What in the database says it is of a newer format than its marker, if anything."""
    newer = sorted(name for name in (KEYSTORE_ID, EPOCH) if name in rows)
    if newer:
        return f"the keystore has rows of format 3 ({', '.join(newer)})"
    if found is KeystoreFormat.UNSEALED:
        macs = repository.count_macs()
        if macs:
            return f"{macs} key and version rows carry MACs"
    return None
