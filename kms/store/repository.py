"""The key repository: rows in, records out. Raises ``kms.errors`` exceptions only."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ParamSpec, Protocol, TypeVar

from sqlalchemy import Connection, Engine, and_, bindparam, delete, insert, inspect, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from kms.errors import (
    AlreadyInitialised,
    KeyExists,
    KeyNotFound,
    NotInitialised,
    StoreUnavailable,
    TooManyVersions,
)
from kms.store.db import WRITE
from kms.store.models import key_versions, keys, kms_metadata

KDF_PARAMETERS = "kdf_parameters"
INIT_MARKER = "init_marker"


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    purpose: str
    algorithm: str
    state: str
    latest_version: int
    incarnation: str
    created_at: datetime


@dataclass(frozen=True)
class KeyVersionRecord:
    key_id: str
    version: int
    wrapped_key: bytes
    public_key: bytes | None
    created_at: datetime

    def __repr__(self) -> str:  # the wrapped key stays out of logs and tracebacks
        return f"KeyVersionRecord(key_id={self.key_id!r}, version={self.version})"


@dataclass(frozen=True)
class KeyVersionSummary:
    """A version's number and time, without its material: what listings need."""

    version: int
    created_at: datetime


@dataclass(frozen=True)
class NewVersion:
    """What a caller hands the repository for a version it has just built."""

    wrapped_key: bytes
    public_key: bytes | None

    def __repr__(self) -> str:
        return "NewVersion(...)"


#: Builds a version once the repository has fixed its number: (key record, version) -> NewVersion.
VersionBuilder = Callable[[KeyRecord, int], NewVersion]


class KeyRepository(Protocol):
    def initialise(self, kdf_parameters: str, init_marker: bytes) -> None: ...
    def read_keystore(self) -> tuple[str, bytes]: ...
    def create_key(self, key: KeyRecord, build: VersionBuilder) -> KeyRecord: ...
    def get_key(self, key_id: str) -> KeyRecord: ...
    def list_keys(self, limit: int, after: str | None) -> list[KeyRecord]: ...
    def list_versions(self, key_id: str) -> list[KeyVersionRecord]: ...
    def version_page(
        self, key_id: str, limit: int, after: int | None
    ) -> list[KeyVersionSummary]: ...
    def newest_versions(self, key_id: str, count: int) -> list[KeyVersionSummary]: ...
    def get_version(self, key_id: str, version: int) -> KeyVersionRecord: ...
    def rotate_key(
        self, key_id: str, build: VersionBuilder, max_versions: int | None = None
    ) -> KeyRecord: ...
    def recreate_key(self, key_id: str, incarnation: str, build: VersionBuilder) -> KeyRecord: ...
    def delete_key(self, key_id: str) -> None: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _key_record(row) -> KeyRecord:  # noqa: ANN001 - a SQLAlchemy Row
    return KeyRecord(
        key_id=row.key_id,
        purpose=row.purpose,
        algorithm=row.algorithm,
        state=row.state,
        latest_version=row.latest_version,
        incarnation=row.incarnation,
        created_at=_as_utc(row.created_at),
    )


def _version_record(row) -> KeyVersionRecord:  # noqa: ANN001
    return KeyVersionRecord(
        key_id=row.key_id,
        version=row.version,
        wrapped_key=bytes(row.wrapped_key),
        public_key=None if row.public_key is None else bytes(row.public_key),
        created_at=_as_utc(row.created_at),
    )


def write_keystore(conn: Connection, kdf_parameters: str, init_marker: bytes) -> None:
    """Insert the KDF parameters and the init marker in the caller's transaction.

    ``kms init`` calls this in the transaction that created the schema, so that a failure
    anywhere leaves no schema without a keystore behind.
    """
    existing = conn.execute(select(kms_metadata.c.name).limit(1)).first()
    if existing is not None:
        raise AlreadyInitialised()
    conn.execute(
        insert(kms_metadata),
        [
            {"name": KDF_PARAMETERS, "value": kdf_parameters.encode("ascii")},
            {"name": INIT_MARKER, "value": init_marker},
        ],
    )


P = ParamSpec("P")
R = TypeVar("R")


def _translate_database_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a failure of the database itself into ``StoreUnavailable``.

    Integrity errors are handled where they mean something (a duplicate key); whatever else the
    driver raises (locked, unreachable, disk full, schema missing) must not cross this layer.
    """

    @functools.wraps(method)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except DBAPIError as exc:
            raise StoreUnavailable() from exc

    return translated


_KEY_COLUMNS = (
    keys.c.key_id,
    keys.c.purpose,
    keys.c.algorithm,
    keys.c.state,
    keys.c.latest_version,
    keys.c.incarnation,
    keys.c.created_at,
)

# Built once: constructing a statement costs more than running it on the hot path.
_SELECT_KEY = select(*_KEY_COLUMNS).where(keys.c.key_id == bindparam("key_id"))
_SELECT_VERSION = select(key_versions).where(
    and_(
        key_versions.c.key_id == bindparam("key_id"), key_versions.c.version == bindparam("version")
    )
)


class SQLKeyRepository:
    """The repository over SQLAlchemy Core; one short transaction per call."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**WRITE)

    def close(self) -> None:
        self._engine.dispose()

    @_translate_database_errors
    def initialise(self, kdf_parameters: str, init_marker: bytes) -> None:
        with self._writer.begin() as conn:
            write_keystore(conn, kdf_parameters, init_marker)

    @_translate_database_errors
    def read_keystore(self) -> tuple[str, bytes]:
        with self._engine.connect() as conn:
            if not inspect(conn).has_table(kms_metadata.name):  # the schema was never created
                raise NotInitialised()
            rows = dict(conn.execute(select(kms_metadata.c.name, kms_metadata.c.value)).all())
        if KDF_PARAMETERS not in rows or INIT_MARKER not in rows:
            raise NotInitialised()
        return bytes(rows[KDF_PARAMETERS]).decode("ascii"), bytes(rows[INIT_MARKER])

    @_translate_database_errors
    def create_key(self, key: KeyRecord, build: VersionBuilder) -> KeyRecord:
        new_version = build(key, 1)
        now = key.created_at
        try:
            with self._writer.begin() as conn:
                conn.execute(
                    insert(keys).values(
                        key_id=key.key_id,
                        purpose=key.purpose,
                        algorithm=key.algorithm,
                        state=key.state,
                        latest_version=1,
                        incarnation=key.incarnation,
                        created_at=now,
                        updated_at=now,
                    )
                )
                self._insert_version(conn, key.key_id, 1, new_version, now)
        except IntegrityError as exc:
            raise KeyExists() from exc
        return key

    @_translate_database_errors
    def get_key(self, key_id: str) -> KeyRecord:
        with self._engine.connect() as conn:
            row = conn.execute(_SELECT_KEY, {"key_id": key_id}).first()
        if row is None:
            raise KeyNotFound()
        return _key_record(row)

    @_translate_database_errors
    def list_keys(self, limit: int, after: str | None) -> list[KeyRecord]:
        query = select(*_KEY_COLUMNS).order_by(keys.c.key_id).limit(limit)
        if after is not None:
            query = query.where(keys.c.key_id > after)
        with self._engine.connect() as conn:
            return [_key_record(row) for row in conn.execute(query)]

    @_translate_database_errors
    def list_versions(self, key_id: str) -> list[KeyVersionRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(key_versions)
                .where(key_versions.c.key_id == key_id)
                .order_by(key_versions.c.version)
            ).all()
        return [_version_record(row) for row in rows]

    @_translate_database_errors
    def version_page(self, key_id: str, limit: int, after: int | None) -> list[KeyVersionSummary]:
        """Up to ``limit`` versions after ``after``, oldest first (a primary-key range scan)."""
        query = (
            select(key_versions.c.version, key_versions.c.created_at)
            .where(key_versions.c.key_id == key_id)
            .order_by(key_versions.c.version)
            .limit(limit)
        )
        if after is not None:
            query = query.where(key_versions.c.version > after)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [KeyVersionSummary(row.version, _as_utc(row.created_at)) for row in rows]

    @_translate_database_errors
    def newest_versions(self, key_id: str, count: int) -> list[KeyVersionSummary]:
        """The newest ``count`` versions, oldest of them first."""
        query = (
            select(key_versions.c.version, key_versions.c.created_at)
            .where(key_versions.c.key_id == key_id)
            .order_by(key_versions.c.version.desc())
            .limit(count)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [KeyVersionSummary(row.version, _as_utc(row.created_at)) for row in reversed(rows)]

    @_translate_database_errors
    def get_version(self, key_id: str, version: int) -> KeyVersionRecord:
        with self._engine.connect() as conn:
            row = conn.execute(_SELECT_VERSION, {"key_id": key_id, "version": version}).first()
        if row is None:
            raise KeyNotFound()
        return _version_record(row)

    @_translate_database_errors
    def rotate_key(
        self, key_id: str, build: VersionBuilder, max_versions: int | None = None
    ) -> KeyRecord:
        with self._writer.begin() as conn:
            # The UPDATE takes the row's write lock (PostgreSQL) or the database's (SQLite,
            # BEGIN IMMEDIATE): concurrent rotations serialise here and each gets its own number.
            # The limit is part of the same UPDATE, so racing rotations cannot pass it together.
            now = utc_now()
            condition = keys.c.key_id == key_id
            if max_versions is not None:
                condition = and_(condition, keys.c.latest_version < max_versions)
            row = conn.execute(
                update(keys)
                .where(condition)
                .values(latest_version=keys.c.latest_version + 1, updated_at=now)
                .returning(*_KEY_COLUMNS)
            ).first()
            if row is None:
                if (
                    max_versions is not None
                    and conn.execute(_SELECT_KEY, {"key_id": key_id}).first()
                ):
                    raise TooManyVersions()
                raise KeyNotFound()
            key = _key_record(row)
            self._insert_version(
                conn, key_id, key.latest_version, build(key, key.latest_version), now
            )
        return key

    @_translate_database_errors
    def recreate_key(self, key_id: str, incarnation: str, build: VersionBuilder) -> KeyRecord:
        with self._writer.begin() as conn:
            now = utc_now()
            row = conn.execute(
                update(keys)
                .where(keys.c.key_id == key_id)
                .values(latest_version=1, incarnation=incarnation, created_at=now, updated_at=now)
                .returning(*_KEY_COLUMNS)
            ).first()
            if row is None:
                raise KeyNotFound()
            key = _key_record(row)
            conn.execute(delete(key_versions).where(key_versions.c.key_id == key_id))
            self._insert_version(conn, key_id, 1, build(key, 1), now)
        return key

    @_translate_database_errors
    def delete_key(self, key_id: str) -> None:
        with self._writer.begin() as conn:
            conn.execute(delete(key_versions).where(key_versions.c.key_id == key_id))
            deleted = conn.execute(delete(keys).where(keys.c.key_id == key_id)).rowcount
            if deleted == 0:
                raise KeyNotFound()

    @staticmethod
    def _insert_version(
        conn,
        key_id: str,
        version: int,
        new_version: NewVersion,
        now: datetime,  # noqa: ANN001
    ) -> None:
        conn.execute(
            insert(key_versions).values(
                key_id=key_id,
                version=version,
                wrapped_key=new_version.wrapped_key,
                public_key=new_version.public_key,
                created_at=now,
            )
        )
