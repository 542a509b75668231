"""Writing the keystore's rows (``kms_metadata``) and rewriting every row at once, in a caller's
transaction: ``kms init``, ``kms upgrade``, ``kms rekey`` and ``kms restore --as-clone``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection, and_, delete, insert, select, update

from kms.errors import AlreadyInitialised
from kms.store.models import key_versions, keys, kms_metadata
from kms.store.records import KeyRecord, KeySealer, KeyVersionRecord
from kms.store.statements import KEY_COLUMNS, key_record, version_record


def write_keystore(conn: Connection, keystore: dict[str, bytes]) -> None:
    """Insert the keystore's rows (KDF parameters, init marker, keystore id, epoch) in the
    caller's transaction.

    ``kms init`` calls this in the transaction that created the schema, so that a failure
    anywhere leaves no schema without a keystore behind.
    """
    existing = conn.execute(select(kms_metadata.c.name).limit(1)).first()
    if existing is not None:
        raise AlreadyInitialised()
    conn.execute(
        insert(kms_metadata), [{"name": name, "value": value} for name, value in keystore.items()]
    )


def replace_keystore_rows(
    conn: Connection, keystore: dict[str, bytes], remove: Sequence[str] = ()
) -> None:
    """Write each of ``keystore``'s rows of ``kms_metadata``, whether or not it exists yet, and
    delete the rows named in ``remove``.

    An existing row is updated in place, never deleted and inserted again: on PostgreSQL a
    transaction waiting in ``SELECT ... FOR UPDATE`` on the epoch row then reads the new value
    once the lock is released, where a deleted row would give it no row at all.
    """
    for name, value in keystore.items():
        updated = conn.execute(
            update(kms_metadata).where(kms_metadata.c.name == name).values(value=value)
        )
        if updated.rowcount == 0:
            conn.execute(insert(kms_metadata).values(name=name, value=value))
    if remove:
        conn.execute(delete(kms_metadata).where(kms_metadata.c.name.in_(list(remove))))


def rewrite_every_row(
    conn: Connection,
    seal_key: KeySealer,
    version_values: Callable[[KeyRecord, KeyVersionRecord], dict[str, object]],
    keystore: dict[str, bytes],
) -> tuple[int, int]:
    """In the caller's write transaction: each key row's new MAC, each of its version rows' new
    values, then the keystore's rows (``kms_metadata``). Returns the number of key rows and
    version rows written."""
    key_rows = version_rows = 0
    for row in conn.execute(select(*KEY_COLUMNS).order_by(keys.c.key_id)).all():
        key = key_record(row)
        conn.execute(update(keys).where(keys.c.key_id == key.key_id).values(mac=seal_key(key)))
        key_rows += 1
        versions = conn.execute(
            select(key_versions)
            .where(key_versions.c.key_id == key.key_id)
            .order_by(key_versions.c.version)
        ).all()
        for version_row in versions:
            version = version_record(version_row)
            conn.execute(
                update(key_versions)
                .where(
                    and_(
                        key_versions.c.key_id == key.key_id,
                        key_versions.c.version == version.version,
                    )
                )
                .values(**version_values(key, version))
            )
            version_rows += 1
    replace_keystore_rows(conn, keystore)
    return key_rows, version_rows
