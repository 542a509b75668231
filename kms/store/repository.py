"""The key repository: rows in, records out. Raises ``kms.errors`` exceptions only."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import ParamSpec, Protocol, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from kms.errors import (
    AlreadyInitialised,
    KeyExists,
    KeyNotFound,
    NotInitialised,
    StoreUnavailable,
)
from kms.store.changes import ALL_KEYS, CHANNEL, KeyChanges, open_changes
from kms.store.db import WRITE
from kms.store.models import key_versions, keys, kms_metadata

KDF_PARAMETERS = "kdf_parameters"


class KeyState(StrEnum):
    """The states of a key row, as stored (``keys.state``)."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    PENDING_DELETION = "pending_deletion"


PENDING_DELETION = KeyState.PENDING_DELETION
INIT_MARKER = "init_marker"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A row of ``keys``.

    Every field but ``mac`` is authenticated by ``mac`` (kms.service.integrity encodes them all,
    in this order). A field added later is covered from its first day; give it a default equal
    to what the migration stores in existing rows, and existing MACs stay valid (a field at its
    default is left out of the encoding).
    """

    key_id: str
    purpose: str
    algorithm: str
    state: str
    latest_version: int
    incarnation: str
    created_at: datetime
    # Issue 8 (migration 0003). Defaults equal what the migration stores in existing rows.
    description: str = ""
    labels: str = "{}"  # canonical JSON: sorted keys, no spaces (validation.encode_labels)
    min_decryption_version: int = 1
    min_available_version: int = 1
    deletion_allowed: bool = True
    pending_deletion_at: datetime | None = None
    # Issue 11 (migration 0004). Seconds; None: no rotation by time.
    rotation_period: int | None = None
    #: None: the configured default applies.
    max_encryptions_per_version: int | None = None
    # Bookkeeping, not authenticated (kms.service.integrity.NOT_AUTHENTICATED).
    use_attempts_while_pending: int = 0
    last_use_attempt: str | None = None  # JSON {"at", "caller", "operation"}
    mac: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class KeyVersionRecord:
    key_id: str
    version: int
    wrapped_key: bytes
    public_key: bytes | None
    created_at: datetime
    mac: bytes | None = None

    def __repr__(self) -> str:  # the wrapped key stays out of logs and tracebacks
        return f"KeyVersionRecord(key_id={self.key_id!r}, version={self.version})"


@dataclass(frozen=True)
class KeyVersionSummary:
    """A version's number, time and use counters, without its material: what listings need."""

    version: int
    created_at: datetime
    encryptions: int = 0
    decryptions: int = 0
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class UseReport:
    """Decryptions and the last use of one version, counted by a process since its last flush."""

    key_id: str
    version: int
    decryptions: int
    last_used_at: datetime


@dataclass(frozen=True)
class DueKey:
    """A key with rotation by time, and when its latest version was made."""

    key: KeyRecord
    latest_created_at: datetime


@dataclass(frozen=True)
class NewVersion:
    """What a caller hands the repository for a version it has just built."""

    wrapped_key: bytes
    public_key: bytes | None
    mac: bytes

    def __repr__(self) -> str:
        return "NewVersion(...)"


@dataclass(frozen=True)
class KeyChange:
    """A key row as it is to be written (MAC included) and the version to insert with it, if any.

    The version's number is ``key.latest_version``. ``replace_versions`` deletes every other
    version first (recreate); ``delete_versions_below`` deletes the versions below that number
    (trim).
    """

    key: KeyRecord
    version: NewVersion | None = None
    replace_versions: bool = False
    delete_versions_below: int | None = None


#: Decides, under the key row's write lock, what to write given the row as it is now; raises to
#: write nothing.
KeyPlanner = Callable[[KeyRecord], KeyChange]
#: Decides, under the key row's write lock, whether the row as it is now may be destroyed; raises
#: to destroy nothing.
DestroyCheck = Callable[[KeyRecord], None]
#: Computes the MAC of a key row, or of a version row given its key row (``kms upgrade``).
KeySealer = Callable[[KeyRecord], bytes]
VersionSealer = Callable[[KeyRecord, KeyVersionRecord], bytes]
#: Re-wraps a version row for ``kms rekey``: its new wrapped key and new MAC.
VersionRewrapper = Callable[[KeyRecord, KeyVersionRecord], tuple[bytes, bytes]]


class KeyRepository(Protocol):
    def initialise(self, kdf_parameters: bytes, init_marker: bytes) -> None: ...
    def read_keystore(self) -> tuple[bytes, bytes]: ...
    def create_key(self, change: KeyChange) -> KeyRecord: ...
    def get_key(self, key_id: str) -> KeyRecord: ...
    def get_key_and_latest_version(
        self, key_id: str
    ) -> tuple[KeyRecord, KeyVersionRecord | None]: ...
    def list_keys(
        self, limit: int, after: str | None, state: str | None = None
    ) -> list[KeyRecord]: ...
    def due_keys(self, now: datetime, limit: int, after: str | None) -> list[str]: ...
    def list_versions(self, key_id: str) -> list[KeyVersionRecord]: ...
    def version_page(
        self, key_id: str, limit: int, after: int | None
    ) -> list[KeyVersionSummary]: ...
    def newest_versions(self, key_id: str, count: int) -> list[KeyVersionSummary]: ...
    def get_version(self, key_id: str, version: int) -> KeyVersionRecord: ...
    def rotate_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord: ...
    def recreate_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord: ...
    def update_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord: ...
    def delete_key(self, key_id: str) -> None: ...
    def destroy_key(self, key_id: str, check: DestroyCheck) -> KeyRecord: ...
    def record_use_attempt(self, key_id: str, incarnation: str, attempt: str) -> None: ...
    def count_keys_by_state(self) -> dict[str, int]: ...
    def seal_all(
        self, seal_key: KeySealer, seal_version: VersionSealer, init_marker: bytes
    ) -> tuple[int, int]: ...
    def count_versions(self) -> int: ...
    def reserve_encryptions(
        self, key_id: str, version: int, wanted: int, at_least: int, limit: int
    ) -> int: ...
    def record_use(self, reports: list[UseReport]) -> None: ...
    def keys_with_rotation_period(self, limit: int, after: str | None) -> list[DueKey]: ...
    def use_totals(self) -> list[tuple[str, int, int, int]]: ...
    def count_keys_with_rotation_period(self) -> int: ...
    def rewrap_all(
        self,
        seal_key: KeySealer,
        rewrap_version: VersionRewrapper,
        kdf_parameters: bytes,
        init_marker: bytes,
    ) -> tuple[int, int]: ...


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
        description=row.description,
        labels=row.labels,
        min_decryption_version=row.min_decryption_version,
        min_available_version=row.min_available_version,
        deletion_allowed=bool(row.deletion_allowed),
        pending_deletion_at=(
            None if row.pending_deletion_at is None else _as_utc(row.pending_deletion_at)
        ),
        use_attempts_while_pending=row.use_attempts_while_pending,
        last_use_attempt=row.last_use_attempt,
        mac=None if row.mac is None else bytes(row.mac),
        rotation_period=row.rotation_period,
        max_encryptions_per_version=row.max_encryptions_per_version,
    )


def _summary(row) -> KeyVersionSummary:  # noqa: ANN001
    return KeyVersionSummary(
        version=row.version,
        created_at=_as_utc(row.created_at),
        encryptions=row.encryptions,
        decryptions=row.decryptions,
        last_used_at=None if row.last_used_at is None else _as_utc(row.last_used_at),
    )


def _version_record(row, prefix: str = "") -> KeyVersionRecord:  # noqa: ANN001
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
        created_at=_as_utc(columns[prefix + "created_at"]),
        mac=None if mac is None else bytes(mac),
    )


def write_keystore(conn: Connection, kdf_parameters: bytes, init_marker: bytes) -> None:
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
            {"name": KDF_PARAMETERS, "value": kdf_parameters},
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
)
_SUMMARY_COLUMNS = (
    key_versions.c.version,
    key_versions.c.created_at,
    key_versions.c.encryptions,
    key_versions.c.decryptions,
    key_versions.c.last_used_at,
)

# Built once: constructing a statement costs more than running it on the hot path.
_SELECT_KEY = select(*_KEY_COLUMNS).where(keys.c.key_id == bindparam("key_id"))
# FOR UPDATE locks the row on PostgreSQL; SQLite has no row locks and ignores it, and its write
# transactions already hold the database's write lock from BEGIN IMMEDIATE.
_SELECT_KEY_FOR_UPDATE = _SELECT_KEY.with_for_update()
_SELECT_VERSION = select(
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
_RESERVE_WHOLE_BLOCK = (
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
_SELECT_KEY_AND_LATEST_VERSION = (
    select(*_KEY_COLUMNS, *_VERSION_COLUMNS_OF_LATEST)
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

_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', :key_id)")


class SQLKeyRepository:
    """The repository over SQLAlchemy Core; one short transaction per call.

    Every write to a key row is announced (kms.store.changes): on PostgreSQL by a ``pg_notify``
    inside the write transaction (delivered to every node on commit), and on every database by
    bumping the key's change counter once the transaction committed. ``changes`` defaults to the
    counters beside the database, used only if a server made them.
    """

    def __init__(self, engine: Engine, changes: KeyChanges | None = None) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**WRITE)
        # What one statement does on its own (the hot path's reads, and reserving a whole block):
        # in autocommit on PostgreSQL, where a transaction around it costs two more round trips
        # (BEGIN, and COMMIT or the pool's ROLLBACK); SQLite's connections are in autocommit.
        self._one_statement = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._notify = engine.dialect.name == "postgresql"
        # SQLite has one writer at a time: a thread that finds the write lock taken sleeps in
        # SQLite's busy handler (1, 2, 5, 10... ms), however soon the lock is free again. Threads
        # of one process queue on this lock instead and start the moment the writer commits, so
        # only other processes ever meet the busy handler. PostgreSQL locks rows: no lock here.
        # (A file lock shared by the processes of a node, tried too, gained nothing measurable
        # in make bench and could wait forever behind a stopped process.)
        self._write_lock: AbstractContextManager[object] = (
            threading.RLock() if engine.dialect.name == "sqlite" else nullcontext()
        )
        self._on_close: list[Callable[[], None]] = []
        self.changes = (
            open_changes(engine.url.render_as_string(hide_password=False))
            if changes is None
            else changes
        )

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on leaving."""
        with self._write_lock, self._writer.begin() as conn:
            yield conn

    def close(self) -> None:
        for stop in self._on_close:
            stop()
        self.changes.close()
        self._engine.dispose()

    def on_close(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` first when the repository closes (the change listener's thread)."""
        self._on_close.append(stop)

    def change_mark(self, key_id: str) -> int:
        """The key's change counter: read it before the row, compare it later (the row cache)."""
        return self.changes.mark(key_id)

    def _announce(self, conn: Connection, key_id: str) -> None:
        """Inside the write transaction: tell the other nodes when it commits (PostgreSQL)."""
        if self._notify:
            conn.execute(_NOTIFY, {"key_id": key_id})

    @_translate_database_errors
    def initialise(self, kdf_parameters: bytes, init_marker: bytes) -> None:
        with self._write() as conn:
            write_keystore(conn, kdf_parameters, init_marker)

    @_translate_database_errors
    def read_keystore(self) -> tuple[bytes, bytes]:
        """The stored KDF parameters and init marker, as bytes: the caller parses them strictly."""
        with self._engine.connect() as conn:
            if not inspect(conn).has_table(kms_metadata.name):  # the schema was never created
                raise NotInitialised()
            rows = dict(conn.execute(select(kms_metadata.c.name, kms_metadata.c.value)).all())
        if KDF_PARAMETERS not in rows or INIT_MARKER not in rows:
            raise NotInitialised()
        return bytes(rows[KDF_PARAMETERS]), bytes(rows[INIT_MARKER])

    @_translate_database_errors
    def create_key(self, change: KeyChange) -> KeyRecord:
        key = change.key
        if change.version is None:
            raise ValueError("a new key needs its first version")
        try:
            with self._write() as conn:
                conn.execute(insert(keys).values(**_key_values(key), updated_at=key.created_at))
                self._insert_version(conn, key, change.version, key.created_at)
                self._announce(conn, key.key_id)
        except IntegrityError as exc:
            raise KeyExists() from exc
        self.changes.bump(key.key_id)
        return key

    @_translate_database_errors
    def get_key(self, key_id: str) -> KeyRecord:
        with self._one_statement.connect() as conn:
            row = conn.execute(_SELECT_KEY, {"key_id": key_id}).first()
        if row is None:
            raise KeyNotFound()
        return _key_record(row)

    @_translate_database_errors
    def get_key_and_latest_version(self, key_id: str) -> tuple[KeyRecord, KeyVersionRecord | None]:
        """The key row and its latest version's row, read together; None for a version row
        that is missing (the caller's checks refuse such a key when it uses that version)."""
        with self._one_statement.connect() as conn:
            row = conn.execute(_SELECT_KEY_AND_LATEST_VERSION, {"key_id": key_id}).first()
        if row is None:
            raise KeyNotFound()
        key = _key_record(row)
        if row.v_version is None:
            return key, None
        return key, _version_record(row, prefix="v_")

    @_translate_database_errors
    def list_keys(self, limit: int, after: str | None, state: str | None = None) -> list[KeyRecord]:
        query = select(*_KEY_COLUMNS).order_by(keys.c.key_id).limit(limit)
        if after is not None:
            query = query.where(keys.c.key_id > after)
        if state is not None:
            query = query.where(keys.c.state == state)
        with self._engine.connect() as conn:
            return [_key_record(row) for row in conn.execute(query)]

    @_translate_database_errors
    def due_keys(self, now: datetime, limit: int, after: str | None) -> list[str]:
        """Up to ``limit`` key_ids (after ``after``, in order) pending deletion and due by ``now``.

        Only a hint: the caller re-checks each row, MAC included, under its write lock.
        """
        query = (
            select(keys.c.key_id)
            .where(
                and_(
                    keys.c.state == PENDING_DELETION,
                    keys.c.pending_deletion_at <= now,
                )
            )
            .order_by(keys.c.key_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(keys.c.key_id > after)
        with self._engine.connect() as conn:
            return list(conn.execute(query).scalars())

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
            select(*_SUMMARY_COLUMNS)
            .where(key_versions.c.key_id == key_id)
            .order_by(key_versions.c.version)
            .limit(limit)
        )
        if after is not None:
            query = query.where(key_versions.c.version > after)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_summary(row) for row in rows]

    @_translate_database_errors
    def newest_versions(self, key_id: str, count: int) -> list[KeyVersionSummary]:
        """The newest ``count`` versions, oldest of them first."""
        query = (
            select(*_SUMMARY_COLUMNS)
            .where(key_versions.c.key_id == key_id)
            .order_by(key_versions.c.version.desc())
            .limit(count)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_summary(row) for row in reversed(rows)]

    @_translate_database_errors
    def get_version(self, key_id: str, version: int) -> KeyVersionRecord:
        with self._one_statement.connect() as conn:
            row = conn.execute(_SELECT_VERSION, {"key_id": key_id, "version": version}).first()
        if row is None:
            raise KeyNotFound()
        return _version_record(row)

    @_translate_database_errors
    def rotate_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord:
        return self._change_key(key_id, plan)

    @_translate_database_errors
    def recreate_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord:
        return self._change_key(key_id, plan)

    def _change_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord:
        """Read the row under its write lock, let ``plan`` decide, write what it returns.

        Concurrent rotations serialise on the lock (the row's on PostgreSQL, the database's on
        SQLite) and each sees the row the previous one wrote. Whatever ``plan`` raises rolls the
        transaction back: nothing is written.
        """
        with self._write() as conn:
            row = conn.execute(_SELECT_KEY_FOR_UPDATE, {"key_id": key_id}).first()
            if row is None:
                raise KeyNotFound()
            change = plan(_key_record(row))
            key = change.key
            if key.key_id != key_id:
                raise ValueError("a key change must keep its key_id")
            now = utc_now()
            values = _key_values(key)
            del values["key_id"]
            conn.execute(
                update(keys).where(keys.c.key_id == key_id).values(**values, updated_at=now)
            )
            if change.replace_versions:
                conn.execute(delete(key_versions).where(key_versions.c.key_id == key_id))
            if change.delete_versions_below is not None:
                conn.execute(
                    delete(key_versions).where(
                        and_(
                            key_versions.c.key_id == key_id,
                            key_versions.c.version < change.delete_versions_below,
                        )
                    )
                )
            if change.version is not None:
                self._insert_version(conn, key, change.version, now)
            self._announce(conn, key_id)
        self.changes.bump(key_id)
        return key

    @_translate_database_errors
    def update_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord:
        """Change a key row (state, metadata, version policy) under its write lock; ``plan`` may
        also ask to delete old versions (trim). Whatever ``plan`` raises writes nothing."""
        return self._change_key(key_id, plan)

    @_translate_database_errors
    def destroy_key(self, key_id: str, check: DestroyCheck) -> KeyRecord:
        """Delete a key and all its versions if ``check`` passes on the row read under its write
        lock; returns the row destroyed.

        Two callers racing to destroy the same key serialise on the lock: the second finds no
        row (``KeyNotFound``), so each key is destroyed once.
        """
        with self._write() as conn:
            row = conn.execute(_SELECT_KEY_FOR_UPDATE, {"key_id": key_id}).first()
            if row is None:
                raise KeyNotFound()
            key = _key_record(row)
            check(key)
            conn.execute(delete(key_versions).where(key_versions.c.key_id == key_id))
            conn.execute(delete(keys).where(keys.c.key_id == key_id))
            self._announce(conn, key_id)
        self.changes.bump(key_id)
        return key

    @_translate_database_errors
    def record_use_attempt(self, key_id: str, incarnation: str, attempt: str) -> None:
        """Count a refused use of a key pending deletion and remember the last one.

        Touches only the bookkeeping columns, which the MAC does not cover, so it needs no key;
        a row that is no longer that pending key is left alone.
        """
        with self._write() as conn:
            conn.execute(
                update(keys)
                .where(
                    and_(
                        keys.c.key_id == key_id,
                        keys.c.incarnation == incarnation,
                        keys.c.state == PENDING_DELETION,
                    )
                )
                .values(
                    use_attempts_while_pending=keys.c.use_attempts_while_pending + 1,
                    last_use_attempt=attempt,
                )
            )

    @_translate_database_errors
    def seal_all(
        self, seal_key: KeySealer, seal_version: VersionSealer, init_marker: bytes
    ) -> tuple[int, int]:
        """Write the MAC of every key and version row and replace the init marker, at once.

        For ``kms upgrade``: one transaction, so a failure leaves the database as it was.
        Returns the number of key rows and version rows sealed.
        """
        sealed_keys = sealed_versions = 0
        with self._write() as conn:
            for row in conn.execute(select(*_KEY_COLUMNS).order_by(keys.c.key_id)).all():
                key = _key_record(row)
                conn.execute(
                    update(keys).where(keys.c.key_id == key.key_id).values(mac=seal_key(key))
                )
                sealed_keys += 1
                versions = conn.execute(
                    select(key_versions).where(key_versions.c.key_id == key.key_id)
                ).all()
                for version_row in versions:
                    version = _version_record(version_row)
                    conn.execute(
                        update(key_versions)
                        .where(
                            and_(
                                key_versions.c.key_id == key.key_id,
                                key_versions.c.version == version.version,
                            )
                        )
                        .values(mac=seal_version(key, version))
                    )
                    sealed_versions += 1
            conn.execute(
                update(kms_metadata)
                .where(kms_metadata.c.name == INIT_MARKER)
                .values(value=init_marker)
            )
            self._announce(conn, ALL_KEYS)
        self.changes.bump_all()
        return sealed_keys, sealed_versions

    @_translate_database_errors
    def reserve_encryptions(
        self, key_id: str, version: int, wanted: int, at_least: int, limit: int
    ) -> int:
        """Reserve up to ``wanted`` (never fewer than ``at_least``) encryptions of a version
        without passing ``limit``; return how many, 0 when fewer than ``at_least`` are left.

        Under the version row's write lock (PostgreSQL) or the database's (SQLite), so racing
        processes on any node never reserve the same encryption twice: the sum of reservations
        is ``encryptions``, which never passes ``limit``. What a process reserved and did not use
        stays counted, so a crash can only waste encryptions, never reuse them.
        """
        # The common case is one statement, made atomic by the database alone: its condition is
        # checked under the row's lock (PostgreSQL re-reads a row a concurrent transaction
        # changed) or the database's write lock, and it runs as its own transaction (autocommit,
        # no BEGIN and COMMIT round trips around it). Each call into the database lets other
        # threads take the GIL, and getting it back can take one switch interval (5 ms) on a
        # busy worker: the fewer calls while holding the write lock, the shorter the queue.
        with self._write_lock, self._one_statement.begin() as conn:
            whole = conn.execute(
                _RESERVE_WHOLE_BLOCK,
                {
                    "of_key": key_id,
                    "of_version": version,
                    "wanted": wanted,
                    "limit": limit,
                    "now": utc_now(),
                },
            )
        if whole.rowcount == 1:
            return wanted
        where = and_(key_versions.c.key_id == key_id, key_versions.c.version == version)
        with self._write() as conn:
            # Fewer than ``wanted`` left, or no such version: read the count, grant what is left.
            used = conn.execute(
                select(key_versions.c.encryptions).where(where).with_for_update()
            ).scalar_one_or_none()
            if used is None:
                raise KeyNotFound()
            granted = min(wanted, limit - used)
            if granted < at_least:
                return 0
            conn.execute(
                update(key_versions)
                .where(where)
                .values(encryptions=key_versions.c.encryptions + granted, last_used_at=utc_now())
            )
        return granted

    @_translate_database_errors
    def record_use(self, reports: list[UseReport]) -> None:
        """Add decryptions and move ``last_used_at`` forward, one UPDATE per version."""
        if not reports:
            return
        with self._write() as conn:
            for report in reports:
                later = bindparam("at", report.last_used_at, type_=key_versions.c.last_used_at.type)
                conn.execute(
                    update(key_versions)
                    .where(
                        and_(
                            key_versions.c.key_id == report.key_id,
                            key_versions.c.version == report.version,
                        )
                    )
                    .values(
                        decryptions=key_versions.c.decryptions + report.decryptions,
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

    @_translate_database_errors
    def keys_with_rotation_period(self, limit: int, after: str | None) -> list[DueKey]:
        """A page of the keys that rotate by time, with their latest version's creation time."""
        query = (
            select(*_KEY_COLUMNS, key_versions.c.created_at.label("latest_created_at"))
            .join(
                key_versions,
                and_(
                    key_versions.c.key_id == keys.c.key_id,
                    key_versions.c.version == keys.c.latest_version,
                ),
            )
            .where(keys.c.rotation_period.is_not(None))
            .order_by(keys.c.key_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(keys.c.key_id > after)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [DueKey(_key_record(row), _as_utc(row.latest_created_at)) for row in rows]

    @_translate_database_errors
    def count_keys_with_rotation_period(self) -> int:
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(keys)
                    .where(keys.c.rotation_period.is_not(None))
                ).scalar_one()
            )

    @_translate_database_errors
    def use_totals(self) -> list[tuple[str, int, int, int]]:
        """``(key_id, version, encryptions, decryptions)`` of every version that was used."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    key_versions.c.key_id,
                    key_versions.c.version,
                    key_versions.c.encryptions,
                    key_versions.c.decryptions,
                )
                .where(or_(key_versions.c.encryptions > 0, key_versions.c.decryptions > 0))
                .order_by(key_versions.c.key_id, key_versions.c.version)
            ).all()
        return [tuple(row) for row in rows]

    @_translate_database_errors
    def count_versions(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(key_versions)).scalar_one())

    @_translate_database_errors
    def rewrap_all(
        self,
        seal_key: KeySealer,
        rewrap_version: VersionRewrapper,
        kdf_parameters: bytes,
        init_marker: bytes,
    ) -> tuple[int, int]:
        """Replace every wrapped key, every MAC, the KDF parameters and the init marker at once.

        For ``kms rekey``: one write transaction, so whatever stops it part-way (an error, a kill,
        a power cut) leaves the database under the old master key, every row as it was. The
        callbacks raise to write nothing. Returns the number of key rows and version rows.
        """
        rewrapped_keys = rewrapped_versions = 0
        with self._write() as conn:
            for row in conn.execute(select(*_KEY_COLUMNS).order_by(keys.c.key_id)).all():
                key = _key_record(row)
                conn.execute(
                    update(keys).where(keys.c.key_id == key.key_id).values(mac=seal_key(key))
                )
                rewrapped_keys += 1
                versions = conn.execute(
                    select(key_versions)
                    .where(key_versions.c.key_id == key.key_id)
                    .order_by(key_versions.c.version)
                ).all()
                for version_row in versions:
                    version = _version_record(version_row)
                    wrapped_key, mac = rewrap_version(key, version)
                    conn.execute(
                        update(key_versions)
                        .where(
                            and_(
                                key_versions.c.key_id == key.key_id,
                                key_versions.c.version == version.version,
                            )
                        )
                        .values(wrapped_key=wrapped_key, mac=mac)
                    )
                    rewrapped_versions += 1
            for name, value in ((KDF_PARAMETERS, kdf_parameters), (INIT_MARKER, init_marker)):
                conn.execute(
                    update(kms_metadata).where(kms_metadata.c.name == name).values(value=value)
                )
            self._announce(conn, ALL_KEYS)
        self.changes.bump_all()
        return rewrapped_keys, rewrapped_versions

    @_translate_database_errors
    def delete_key(self, key_id: str) -> None:
        with self._write() as conn:
            conn.execute(delete(key_versions).where(key_versions.c.key_id == key_id))
            deleted = conn.execute(delete(keys).where(keys.c.key_id == key_id)).rowcount
            if deleted == 0:
                raise KeyNotFound()
            self._announce(conn, key_id)
        self.changes.bump(key_id)

    @_translate_database_errors
    def count_keys_by_state(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(keys.c.state, func.count()).group_by(keys.c.state)).all()
        return {state: count for state, count in rows}

    @staticmethod
    def _insert_version(
        conn,  # noqa: ANN001
        key: KeyRecord,
        new_version: NewVersion,
        now: datetime,
    ) -> None:
        conn.execute(
            insert(key_versions).values(
                key_id=key.key_id,
                version=key.latest_version,
                wrapped_key=new_version.wrapped_key,
                public_key=new_version.public_key,
                created_at=now,
                mac=new_version.mac,
            )
        )


def _key_values(key: KeyRecord) -> dict[str, object]:
    """Column values of a key row: every field of the record, MAC included."""
    return {name: getattr(key, name) for name in key.__dataclass_fields__}
