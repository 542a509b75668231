"""Initialising and opening the keystore: the sealed root secret, the init marker, the keystore
id and the epoch.

The root secret (kms.service.keyring) is 32 random bytes made at ``kms init``, sealed by the
master-key backend (kms.service.masterkey) in the ``root_secret`` row. The init marker is 32
random bytes wrapped under the root secret's wrapping key. Unwrapping it at startup proves the
root secret belongs to these rows before anything else happens.

Its associated data also records the keystore's format, which says what the rows must carry:

1. ``kms/init-marker/v1``: made before row MACs (kms 0.1.0); no row carries a MAC.
2. ``kms/init-marker/v2``: rows carry format-1 MACs, bound to no keystore, and no generation.
3. ``kms/init-marker/v3`` with the keystore id: rows carry format-2 MACs bound to the keystore
   id (the ``keystore_id`` row, random at ``kms init``), key rows a generation, and the
   ``epoch`` row the keystore epoch (kms.service.integrity). The root secret is the key PBKDF2
   derives from the passphrase, used directly as the wrapping key (wrap format 3).
4. ``kms/init-marker/v4`` with the keystore id, wrapped in wrap format 4: what format 3 carries,
   and the root secret sealed by a backend (``root_secret``); wraps use the HKDF-derived
   wrapping key.

Only format 4 is served. ``kms upgrade`` brings the others to it in one transaction, having
verified every MAC there is first (kms.service.keys.maintenance); from format 3 it seals the
passphrase-derived key as the root secret, so every row MAC and every earlier wrap stays valid.
Nobody without the root secret can turn one marker into another; and an older marker put back
on a keystore whose rows carry MACs (or that has an id) is an integrity alarm, never an upgrade:
``kms upgrade`` would otherwise seal whatever the rows hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum

from kms.crypto.encoding import encode_aad
from kms.errors import (
    AlreadyInitialised,
    KeystoreTampered,
    NotInitialised,
    UnwrapFailed,
    UpgradeNeeded,
    WrongPassphrase,
)
from kms.service.integrity import epoch_row
from kms.service.keyring import ROOT_SECRET_BYTES, RootKeyring, zeroise
from kms.service.masterkey import MasterKeyBackend
from kms.store.records import EPOCH, INIT_MARKER, KEYSTORE_ID, ROOT_SECRET, KeyRepository

#: The marker of a keystore made before row MACs (kms up to 0.1.0), until `kms upgrade`.
INIT_MARKER_AAD_UNSEALED = encode_aad(b"kms/init-marker/v1")
#: The marker of a keystore whose rows carry format-1 MACs, until `kms upgrade`.
INIT_MARKER_AAD_UNBOUND = encode_aad(b"kms/init-marker/v2")
KEYSTORE_ID_BYTES = 16
#: The epoch of a new keystore, and of one `kms upgrade` brought to format 3 or later.
FIRST_EPOCH = 1


class KeystoreFormat(IntEnum):
    UNSEALED = 1
    UNBOUND = 2
    #: The root secret is the passphrase-derived key itself: no ``root_secret`` row.
    UNWRAPPED_ROOT = 3
    CURRENT = 4


def init_marker_aad(keystore_id: bytes) -> bytes:
    """The marker's AAD in keystore format 4: bound to the keystore id."""
    return encode_aad(b"kms/init-marker/v4", keystore_id)


def init_marker_aad_v3(keystore_id: bytes) -> bytes:
    """The marker's AAD in keystore format 3, until ``kms upgrade``."""
    return encode_aad(b"kms/init-marker/v3", keystore_id)


def new_root_secret() -> bytearray:
    return bytearray(os.urandom(ROOT_SECRET_BYTES))


def new_keystore(backend: MasterKeyBackend) -> dict[str, bytes]:
    """The rows of a new keystore (``kms_metadata``): a new root secret sealed by ``backend``,
    a new keystore id, the init marker wrapped under the root secret, and the first epoch."""
    keyring = RootKeyring(new_root_secret(), os.urandom(KEYSTORE_ID_BYTES))
    try:
        return sealed_keystore_rows(backend, keyring, FIRST_EPOCH)
    finally:
        keyring.close()


def sealed_keystore_rows(
    backend: MasterKeyBackend, keyring: RootKeyring, epoch: int
) -> dict[str, bytes]:
    """``keyring``'s root secret sealed by ``backend``, with ``keystore_rows``."""
    root_secret = keyring.root_secret()
    try:
        sealed = backend.seal(root_secret, keyring.keystore_id)
    finally:
        zeroise(root_secret)
    return {**sealed, **keystore_rows(keyring, epoch)}


def keystore_rows(keyring: RootKeyring, epoch: int) -> dict[str, bytes]:
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
    #: Knows the keystore id in formats 3 and 4; in the older ones it knows none (`kms upgrade`).
    keyring: RootKeyring
    format: KeystoreFormat
    #: The stored ``kms_metadata`` rows, as read when opened.
    rows: dict[str, bytes]

    @property
    def sealed(self) -> bool:
        return self.format is KeystoreFormat.CURRENT


def open_keystore(
    repository: KeyRepository, backend: MasterKeyBackend, *, allow_old: bool = False
) -> OpenedKeystore:
    """Open the root secret once with ``backend`` and prove it on the init marker.

    Raises ``NotInitialised``, whatever the backend raises when the root secret does not open
    (``WrongPassphrase``, ``InvalidKDFParameters``, a ``KeystoreError`` naming the HSM's
    fault), ``KeystoreTampered`` (a marker that does not fit the root secret or the rows) or (a
    keystore of an older format, unless ``allow_old``) ``UpgradeNeeded``.
    """
    rows = repository.read_metadata()
    if INIT_MARKER not in rows:
        raise NotInitialised()
    marker, keystore_id = rows[INIT_MARKER], rows.get(KEYSTORE_ID)
    if ROOT_SECRET in rows:
        if not keystore_id:
            raise KeystoreTampered(
                "the keystore has a sealed root secret (keystore format 4) but no keystore id: "
                "older rows were put back; nothing was written (restore the database from a "
                "backup)"
            )
        keyring = RootKeyring(backend.unseal(rows, keystore_id), keystore_id)
        if not _unwraps(keyring, marker, init_marker_aad(keystore_id)):
            older = next(
                (
                    old_format
                    for aad, old_format in _older_markers(keystore_id)
                    if _unwraps(keyring, marker, aad)
                ),
                None,
            )
            keyring.close()
            if older is not None:
                raise KeystoreTampered(
                    f"the init marker is of keystore format {older.value}, but the keystore has "
                    "a sealed root secret (format 4): an older marker was put back; nothing was "
                    "written (restore the database from a backup)"
                )
            raise KeystoreTampered(
                "the root secret opens, but the init marker does not unwrap under it: the "
                "marker or the sealed root secret was replaced; nothing was written"
            )
        return OpenedKeystore(keyring, KeystoreFormat.CURRENT, rows)
    keyring = RootKeyring(backend.legacy_root(rows), keystore_id or b"")
    found = None
    for aad, old_format in _older_markers(keystore_id):
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
    return OpenedKeystore(keyring, found, rows)


def _older_markers(keystore_id: bytes | None) -> list[tuple[bytes, KeystoreFormat]]:
    """The AADs of the markers of keystore formats 3 (given an id), 2 and 1, newest first."""
    older = [
        (INIT_MARKER_AAD_UNBOUND, KeystoreFormat.UNBOUND),
        (INIT_MARKER_AAD_UNSEALED, KeystoreFormat.UNSEALED),
    ]
    if keystore_id:
        older.insert(0, (init_marker_aad_v3(keystore_id), KeystoreFormat.UNWRAPPED_ROOT))
    return older


def _unwraps(keyring: RootKeyring, marker: bytes, aad: bytes) -> bool:

    try:
        zeroise(keyring.unwrap(marker, aad))
    except UnwrapFailed:
        return False
    return True


def _newer_than(
    found: KeystoreFormat, rows: dict[str, bytes], repository: KeyRepository
) -> str | None:
    """What in the database says it is of a newer format than its marker, if anything."""
    if found is KeystoreFormat.UNWRAPPED_ROOT:
        return None  # a format-4 keystore has a root_secret row, and opens as one
    newer = sorted(name for name in (KEYSTORE_ID, EPOCH) if name in rows)
    if newer:
        return f"the keystore has rows of format 3 ({', '.join(newer)})"
    if found is KeystoreFormat.UNSEALED:
        macs = repository.count_macs()
        if macs:
            return f"{macs} key and version rows carry MACs"
    return None
