"""What the row MACs cover, and how a row is encoded for them.

The database is untrusted storage: anyone who can write to it must not be able to change what
kms does with a key. So every key row carries a MAC over all its fields (``KeyRecord`` minus
``mac``), and every version row a MAC over its wrapped key and public key bound to the key's
identity (key_id, version, incarnation, purpose, algorithm). The MAC key is derived from the
master key (kms.crypto.integrity); the keyring holds it.

Adding a field to ``KeyRecord`` is the one step needed to cover it: the encoding walks the
record's fields. A field whose value equals its declared default is left out of the encoding, so
a field added with a default (and a migration that stores that default in existing rows) leaves
every existing MAC valid; the encoding stays injective because the defaults are fixed in code.
Changing a field's default, its name or the order of the fields changes the encoding of every
row that differs from it: ``tests/unit/test_integrity.py`` pins the encoding with a known answer.
A new table that security depends on needs a MAC column of its own: encode its rows with
``encode_record`` under a label of their own, bound to the key's identity as version rows are
(alias rows: ``encode_alias_row``).
Every read that feeds a decision goes through ``TrustedRows.checked`` / ``.version``
(kms.service.keys.trust).

Since keystore format 3 every tag is bound to the keystore's id (kms.crypto.integrity, format 2),
and the key row's ``generation`` (the keystore epoch of the change that wrote it) is one of its
fields. The epoch itself is stored as ``0x01 || epoch (8 bytes, big-endian) || tag``, the tag
over ``encode_record(EPOCH_LABEL, [("epoch", epoch)])``.
"""

from __future__ import annotations

import struct
from dataclasses import MISSING, fields

from kms.crypto.integrity import FieldValue, encode_record
from kms.errors import IntegrityFailure
from kms.service.keyring import Keyring
from kms.store.records import AliasRecord, KeyRecord

KEY_ROW_LABEL = b"kms/key-row/v1"
VERSION_ROW_LABEL = b"kms/key-version/v1"
EPOCH_LABEL = b"kms/epoch/v1"
ALIAS_ROW_LABEL = b"kms/alias-row/v1"
EPOCH_FORMAT_V1 = b"\x01"
_EPOCH = struct.Struct(">Q")
#: The only fields of ``KeyRecord`` the MAC does not cover: the MAC itself, and the bookkeeping of
#: refused uses of a key pending deletion. Those only inform the operator (who still calls a key
#: about to go) and decide nothing; they are written on every refused call, without the master
#: key. Someone who can write the database can falsify them, and can hide callers from the
#: operator that way, but cannot make kms use, keep or destroy a key.
NOT_AUTHENTICATED = frozenset({"mac", "use_attempts_while_pending", "last_use_attempt"})
_KEY_FIELDS = tuple(field for field in fields(KeyRecord) if field.name not in NOT_AUTHENTICATED)


def _at_default(value: FieldValue, default: object) -> bool:
    return default is not MISSING and type(value) is type(default) and value == default


def encode_key_row(key: KeyRecord) -> bytes:
    """The canonical bytes a key row's MAC is computed over."""
    return encode_record(
        KEY_ROW_LABEL,
        (
            (field.name, getattr(key, field.name))
            for field in _KEY_FIELDS
            if not _at_default(getattr(key, field.name), field.default)
        ),
    )


def encode_version_row(
    key: KeyRecord, version: int, wrapped_key: bytes, public_key: bytes | None
) -> bytes:
    """The canonical bytes a version row's MAC is computed over, bound to its key's identity."""
    return encode_record(
        VERSION_ROW_LABEL,
        (
            ("key_id", key.key_id),
            ("version", version),
            ("incarnation", key.incarnation),
            ("purpose", key.purpose),
            ("algorithm", key.algorithm),
            ("wrapped_key", wrapped_key),
            ("public_key", public_key),
        ),
    )


def encode_alias_row(alias: AliasRecord) -> bytes:
    """The canonical bytes an alias row's MAC is computed over: the name bound to the key it
    names and to the generation of the change that wrote it."""
    return encode_record(
        ALIAS_ROW_LABEL,
        (
            ("alias_name", alias.alias_name),
            ("key_id", alias.key_id),
            ("created_at", alias.created_at),
            ("updated_at", alias.updated_at),
            ("generation", alias.generation),
        ),
    )


def epoch_row(keyring: Keyring, epoch: int) -> bytes:
    """The stored value of the keystore epoch ``epoch``, tagged."""
    return (
        EPOCH_FORMAT_V1
        + _EPOCH.pack(epoch)
        + keyring.tag(encode_record(EPOCH_LABEL, [("epoch", epoch)]))
    )


def read_epoch(keyring: Keyring, stored: bytes | None) -> int:
    """The keystore epoch in a stored value; ``IntegrityFailure`` unless its tag checks out."""
    if stored is None:
        raise IntegrityFailure("the keystore epoch row is missing")
    head = len(EPOCH_FORMAT_V1) + _EPOCH.size
    if len(stored) <= head or stored[:1] != EPOCH_FORMAT_V1:
        raise IntegrityFailure("the keystore epoch row is malformed")
    (epoch,) = _EPOCH.unpack(stored[1:head])
    keyring.verify_tag(
        encode_record(EPOCH_LABEL, [("epoch", epoch)]), stored[head:], "the keystore epoch"
    )
    return int(epoch)
