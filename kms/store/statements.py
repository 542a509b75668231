"""The statements the repository shares or runs on its hot path, and rows to records and back.

The hot path's statements (the reads of a key, of a version, of a key with its latest version,
and the reservation of a block of encryptions) are built once at import and bound by name
(``bindparam``) at each call: constructing a SQLAlchemy statement costs more than running it.
The others here are built per call from a record or a report.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    Row,
    Select,
    Update,
    and_,
    bindparam,
    case,
    insert,
    or_,
    select,
    text,
    update,
)

from kms.store.changes import CHANNEL
from kms.store.models import key_versions, keys, kms_metadata
from kms.store.patterns import ESCAPE, SQLPattern, successor
from kms.store.records import KeyRecord, KeyVersionRecord, KeyVersionSummary, NewVersion, UseReport

KEY_COLUMNS = (
    keys.c.key_id,
    keys.c.purpose,
    keys.c.algorithm,
    keys.c.state,
    keys.c.latest_version,
    keys.c.incarnation,
    keys.c.created_at,
    keys.c.description,
    keys.c.labels,
    keys.c.min_decryption_version,
    keys.c.min_available_version,
    keys.c.deletion_allowed,
    keys.c.pending_deletion_at,
    keys.c.use_attempts_while_pending,
    keys.c.last_use_attempt,
    keys.c.mac,
    keys.c.rotation_period,
    keys.c.max_encryptions_per_version,
    keys.c.generation,
)
SUMMARY_COLUMNS = (
    key_versions.c.version,
    key_versions.c.created_at,
    key_versions.c.encryptions,
    key_versions.c.decryptions,
    key_versions.c.last_used_at,
)

SELECT_KEY = select(*KEY_COLUMNS).where(keys.c.key_id == bindparam("key_id"))
# FOR UPDATE locks the row on PostgreSQL; SQLite has no row locks and ignores it, and its write
# transactions already hold the database's write lock from BEGIN IMMEDIATE.
SELECT_KEY_FOR_UPDATE = SELECT_KEY.with_for_update()
SELECT_EPOCH_FOR_UPDATE = (
    select(kms_metadata.c.value).where(kms_metadata.c.name == bindparam("name")).with_for_update()
)
SELECT_VERSION = select(
    key_versions.c.key_id,
    key_versions.c.version,
    key_versions.c.wrapped_key,
    key_versions.c.public_key,
    key_versions.c.created_at,
    key_versions.c.mac,
).where(
    and_(
        key_versions.c.key_id == bindparam("key_id"), key_versions.c.version == bindparam("version")
    )
)

# Reserving a block of encryptions when the version has that many left: one statement in the
# write transaction (the common case; a read under lock first costs a second round trip).
RESERVE_WHOLE_BLOCK = (
    update(key_versions)
    .where(
        and_(
            key_versions.c.key_id == bindparam("of_key"),
            key_versions.c.version == bindparam("of_version"),
            key_versions.c.encryptions + bindparam("wanted") <= bindparam("limit"),
        )
    )
    .values(
        encryptions=key_versions.c.encryptions + bindparam("wanted"),
        last_used_at=bindparam("now"),
    )
)
# A key row and its latest version row in one statement (one snapshot): what the first use of a
# key on a worker needs. The version's columns are labelled, the key's keep their names.
_VERSION_COLUMNS_OF_LATEST = (
    key_versions.c.version.label("v_version"),
    key_versions.c.wrapped_key.label("v_wrapped_key"),
    key_versions.c.public_key.label("v_public_key"),
    key_versions.c.created_at.label("v_created_at"),
    key_versions.c.mac.label("v_mac"),
)
SELECT_KEY_AND_LATEST_VERSION = (
    select(*KEY_COLUMNS, *_VERSION_COLUMNS_OF_LATEST)
    .select_from(
        keys.outerjoin(
            key_versions,
            and_(
                key_versions.c.key_id == keys.c.key_id,
                key_versions.c.version == keys.c.latest_version,
            ),
        )
    )
    .where(keys.c.key_id == bindparam("key_id"))
)

NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', :key_id)")

#: Every version that was used: ``(key_id, version, encryptions made, decryptions, encryptions
#: reserved)``.
USED_VERSIONS = (
    select(
        key_versions.c.key_id,
        key_versions.c.version,
        key_versions.c.encryptions_used,
        key_versions.c.decryptions,
        key_versions.c.encryptions,
    )
    .where(or_(key_versions.c.encryptions > 0, key_versions.c.decryptions > 0))
    .order_by(key_versions.c.key_id, key_versions.c.version)
)


def used_versions_after(after: tuple[str, int] | None, limit: int) -> Select[Any]:
    """Up to ``limit`` used versions after ``(key_id, version)`` in key order: one page."""
    query = USED_VERSIONS.limit(limit)
    if after is None:
        return query
    key_id, version = after
    return query.where(
        or_(
            key_versions.c.key_id > key_id,
            and_(key_versions.c.key_id == key_id, key_versions.c.version > version),
        )
    )


def key_id_matches(key_id: ColumnElement[str], pattern: SQLPattern) -> ColumnElement[bool]:
    """``key_id LIKE pattern``, and the range of the pattern's literal prefix, which an index on
    ``key_id`` in binary order answers by a seek (kms.store.patterns). ``key_id`` is the column
    in binary order (``COLLATE "C"`` on PostgreSQL), where the range is exact."""
    condition = key_id.like(pattern.like, escape=ESCAPE)
    if not pattern.prefix:
        return condition
    bounds = [key_id >= pattern.prefix]
    upper = successor(pattern.prefix)
    if upper is not None:
        bounds.append(key_id < upper)
    return and_(*bounds, condition)


def add_use(report: UseReport) -> Update:
    """Add a report's decryptions and encryptions made to its version and move ``last_used_at``
    forward, never back."""
    later = bindparam("at", report.last_used_at, type_=key_versions.c.last_used_at.type)
    return (
        update(key_versions)
        .where(
            and_(
                key_versions.c.key_id == report.key_id,
                key_versions.c.version == report.version,
            )
        )
        .values(
            decryptions=key_versions.c.decryptions + report.decryptions,
            encryptions_used=key_versions.c.encryptions_used + report.encryptions,
            last_used_at=case(
                (
                    or_(
                        key_versions.c.last_used_at.is_(None),
                        key_versions.c.last_used_at < later,
                    ),
                    later,
                ),
                else_=key_versions.c.last_used_at,
            ),
        )
    )


def insert_version(key: KeyRecord, new_version: NewVersion, now: datetime) -> Insert:
    """The row of ``key``'s latest version, as ``new_version`` describes it."""
    return insert(key_versions).values(
        key_id=key.key_id,
        version=key.latest_version,
        wrapped_key=new_version.wrapped_key,
        public_key=new_version.public_key,
        created_at=now,
        mac=new_version.mac,
    )


def as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def key_record(row: Row[*tuple[Any, ...]]) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id,
        purpose=row.purpose,
        algorithm=row.algorithm,
        state=row.state,
        latest_version=row.latest_version,
        incarnation=row.incarnation,
        created_at=as_utc(row.created_at),
        description=row.description,
        labels=row.labels,
        min_decryption_version=row.min_decryption_version,
        min_available_version=row.min_available_version,
        deletion_allowed=bool(row.deletion_allowed),
        pending_deletion_at=(
            None if row.pending_deletion_at is None else as_utc(row.pending_deletion_at)
        ),
        use_attempts_while_pending=row.use_attempts_while_pending,
        last_use_attempt=row.last_use_attempt,
        mac=None if row.mac is None else bytes(row.mac),
        rotation_period=row.rotation_period,
        max_encryptions_per_version=row.max_encryptions_per_version,
        generation=row.generation,
    )


def summary(row: Row[*tuple[Any, ...]]) -> KeyVersionSummary:
    return KeyVersionSummary(
        version=row.version,
        created_at=as_utc(row.created_at),
        encryptions=row.encryptions,
        decryptions=row.decryptions,
        last_used_at=None if row.last_used_at is None else as_utc(row.last_used_at),
    )


def version_record(row: Row[*tuple[Any, ...]], prefix: str = "") -> KeyVersionRecord:
    """A version row; ``prefix``: its columns' labels in a query that also reads the key row
    (the key's ``key_id`` is the version's)."""
    columns = row._mapping
    public_key = columns[prefix + "public_key"]
    mac = columns[prefix + "mac"]
    return KeyVersionRecord(
        key_id=columns["key_id"],
        version=columns[prefix + "version"],
        wrapped_key=bytes(columns[prefix + "wrapped_key"]),
        public_key=None if public_key is None else bytes(public_key),
        created_at=as_utc(columns[prefix + "created_at"]),
        mac=None if mac is None else bytes(mac),
    )


def key_values(key: KeyRecord) -> dict[str, object]:
    """Column values of a key row: every field of the record, MAC included."""
    return {name: getattr(key, name) for name in key.__dataclass_fields__}
