"""The key repository over SQLAlchemy Core: rows in, records out. Raises ``kms.errors`` exceptions
only.

Its records and protocol are in ``kms.store.records``, its prebuilt statements in
``kms.store.statements``.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from kms.errors import (
    KeyExists,
    KeyNotFound,
    NotInitialised,
)
from kms.store.aliases import AliasRows, delete_aliases_of, reseal_aliases
from kms.store.changes import ALL_KEYS, KeyChanges, open_changes
from kms.store.db import WRITE
from kms.store.guards import statement_deadline as _deadline
from kms.store.guards import translate_database_errors as _translate_database_errors
from kms.store.keystore_rows import replace_keystore_rows, rewrite_every_row
from kms.store.models import aliases, key_versions, keys, kms_metadata
from kms.store.patterns import glob_to_like
from kms.store.reclaim import reclaim_freed_space
from kms.store.records import (
    EPOCH,
    INIT_MARKER,
    AliasSealer,
    DestroyCheck,
    DueKey,
    KeyPlanner,
    KeyRecord,
    KeySealer,
    KeyState,
    KeyVersionRecord,
    KeyVersionSummary,
    VersionRewrapper,
    VersionSealer,
    utc_now,
)
from kms.store.statements import (
    KEY_COLUMNS,
    NOTIFY,
    SELECT_EPOCH_FOR_UPDATE,
    SELECT_KEY,
    SELECT_KEY_AND_LATEST_VERSION,
    SELECT_KEY_FOR_UPDATE,
    SELECT_VERSION,
    SUMMARY_COLUMNS,
    as_utc,
    insert_version,
    key_id_matches,
    key_record,
    key_values,
    summary,
    version_record,
)
from kms.store.usage import UseBookkeeping


class SQLKeyRepository(UseBookkeeping, AliasRows):
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
        # key_id in binary order: the key listing's order and ranges (kms.store.patterns).
        self._binary_key_id: ColumnElement[str] = (
            keys.c.key_id.collate("C") if engine.dialect.name == "postgresql" else keys.c.key_id
        )
        self._binary_alias_name: ColumnElement[str] = (
            aliases.c.alias_name.collate("C")
            if engine.dialect.name == "postgresql"
            else aliases.c.alias_name
        )
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
            conn.execute(NOTIFY, {"key_id": key_id})

    def read_keystore(self) -> bytes:
        """The stored init marker; ``NotInitialised`` if there is none."""
        rows = self.read_metadata()
        if INIT_MARKER not in rows:
            raise NotInitialised()
        return rows[INIT_MARKER]

    @_translate_database_errors
    def replace_keystore(self, rows: dict[str, bytes], remove: Sequence[str] = ()) -> None:
        """In one write transaction: write ``rows`` of ``kms_metadata`` and delete those named
        in ``remove`` (``kms upgrade`` sealing the root secret, ``kms rekey --to``)."""
        with self._write() as conn:
            replace_keystore_rows(conn, rows, remove)

    @_translate_database_errors
    def read_metadata(self) -> dict[str, bytes]:
        """Every row of ``kms_metadata``, by name, as bytes."""
        with self._engine.connect() as conn:
            if not inspect(conn).has_table(kms_metadata.name):  # the schema was never created
                raise NotInitialised()
            rows = conn.execute(select(kms_metadata.c.name, kms_metadata.c.value)).all()
        return {name: bytes(value) for name, value in rows}

    @_translate_database_errors
    def count_macs(self) -> int:
        """Key and version rows that carry a MAC (``kms upgrade`` of a keystore without any)."""
        with self._engine.connect() as conn:
            return sum(
                int(
                    conn.execute(
                        select(func.count()).select_from(table).where(table.c.mac.is_not(None))
                    ).scalar_one()
                )
                for table in (keys, key_versions)
            )

    @_translate_database_errors
    def create_key(self, key: KeyRecord, plan: KeyPlanner) -> KeyRecord:
        """Insert a new key: ``plan`` gets ``key`` and the epoch row, under the epoch row's lock,
        and says what to write (its first version included)."""
        try:
            with self._write() as conn:
                change = plan(key, self._locked_epoch(conn))
                key = change.key
                if change.version is None:
                    raise ValueError("a new key needs its first version")
                conn.execute(insert(keys).values(**key_values(key), updated_at=key.created_at))
                conn.execute(insert_version(key, change.version, key.created_at))
                self._write_epoch(conn, change.epoch)
                self._announce(conn, key.key_id)
        except IntegrityError as exc:
            raise KeyExists() from exc
        self.changes.bump(key.key_id)
        return key

    def _locked_epoch(self, conn: Connection) -> bytes | None:
        """The epoch row, locked until the transaction ends (PostgreSQL; SQLite's write
        transaction holds the whole database): key changes on every node take it in turn, each
        after its key row."""
        value = conn.execute(SELECT_EPOCH_FOR_UPDATE, {"name": EPOCH}).scalar_one_or_none()
        return None if value is None else bytes(value)

    def _write_epoch(self, conn: Connection, epoch: bytes | None) -> None:
        if epoch is not None:
            replace_keystore_rows(conn, {EPOCH: epoch})

    @_translate_database_errors
    def get_key(self, key_id: str) -> KeyRecord:
        with self._one_statement.connect() as conn:
            row = conn.execute(SELECT_KEY, {"key_id": key_id}).first()
        if row is None:
            raise KeyNotFound(key_id)
        return key_record(row)

    @_translate_database_errors
    def get_key_and_latest_version(self, key_id: str) -> tuple[KeyRecord, KeyVersionRecord | None]:
        """The key row and its latest version's row, read together; None for a version row
        that is missing (the caller's checks refuse such a key when it uses that version)."""
        with self._one_statement.connect() as conn:
            row = conn.execute(SELECT_KEY_AND_LATEST_VERSION, {"key_id": key_id}).first()
        if row is None:
            raise KeyNotFound(key_id)
        key = key_record(row)
        if row.v_version is None:
            return key, None
        return key, version_record(row, prefix="v_")

    @_translate_database_errors
    def list_keys(self, limit: int, after: str | None, state: str | None = None) -> list[KeyRecord]:
        query = select(*KEY_COLUMNS).order_by(keys.c.key_id).limit(limit)
        if after is not None:
            query = query.where(keys.c.key_id > after)
        if state is not None:
            query = query.where(keys.c.state == state)
        with self._engine.connect() as conn:
            return [key_record(row) for row in conn.execute(query)]

    @_translate_database_errors
    def scan_keys(
        self,
        limit: int,
        after: str | None,
        state: str | None = None,
        patterns: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> list[KeyRecord]:
        """Up to ``limit`` key rows after ``after`` in binary key_id order, in ``state``, whose
        key_id matches one of the globs ``patterns`` (None: every key_id).

        The globs are conditions in the query (kms.store.patterns), so the database returns only
        rows in scope, each glob with a literal prefix reached by a seek of that prefix's range
        in a key_id index in binary order (SQLite's primary key; on PostgreSQL the index of
        migration 0005, whatever the database's collation). A glob with a set (``[a-z]``) is
        matched by a wider condition: the caller filters those rows with ``fnmatchcase``. Each
        glob is a statement of its own; their sorted rows are merged.

        ``deadline`` (``time.monotonic()``) interrupts a statement still running then:
        ``ListingTimedOut``.
        """
        key_id = self._binary_key_id
        query = select(*KEY_COLUMNS).order_by(key_id).limit(limit)
        if after is not None:
            query = query.where(key_id > after)
        if state is not None:
            query = query.where(keys.c.state == state)
        queries = [query]
        if patterns is not None:
            translated = [glob_to_like(pattern) for pattern in dict.fromkeys(patterns)]
            if not any(pattern.everything for pattern in translated):
                queries = [query.where(key_id_matches(key_id, p)) for p in translated]
        with self._engine.connect() as conn, _deadline(conn, deadline):
            pages = [[key_record(row) for row in conn.execute(each)] for each in queries]
        if len(pages) == 1:
            return pages[0]
        merged: list[KeyRecord] = []
        # Python orders str by code point: the binary order of their UTF-8, the query's order.
        for key in heapq.merge(*pages, key=lambda record: record.key_id):
            if merged and merged[-1].key_id == key.key_id:
                continue  # in the scope of two globs
            merged.append(key)
            if len(merged) == limit:
                break
        return merged

    @_translate_database_errors
    def due_keys(self, now: datetime, limit: int, after: str | None) -> list[str]:
        """Up to ``limit`` key_ids (after ``after``, in order) pending deletion and due by ``now``.

        Only a hint: the caller re-checks each row, MAC included, under its write lock.
        """
        query = (
            select(keys.c.key_id)
            .where(
                and_(
                    keys.c.state == KeyState.PENDING_DELETION,
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
        return [version_record(row) for row in rows]

    @_translate_database_errors
    def version_page(self, key_id: str, limit: int, after: int | None) -> list[KeyVersionSummary]:
        """Up to ``limit`` versions after ``after``, oldest first (a primary-key range scan)."""
        query = (
            select(*SUMMARY_COLUMNS)
            .where(key_versions.c.key_id == key_id)
            .order_by(key_versions.c.version)
            .limit(limit)
        )
        if after is not None:
            query = query.where(key_versions.c.version > after)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [summary(row) for row in rows]

    @_translate_database_errors
    def newest_versions(self, key_id: str, count: int) -> list[KeyVersionSummary]:
        """The newest ``count`` versions, oldest of them first."""
        query = (
            select(*SUMMARY_COLUMNS)
            .where(key_versions.c.key_id == key_id)
            .order_by(key_versions.c.version.desc())
            .limit(count)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [summary(row) for row in reversed(rows)]

    @_translate_database_errors
    def get_version(self, key_id: str, version: int) -> KeyVersionRecord:
        with self._one_statement.connect() as conn:
            row = conn.execute(SELECT_VERSION, {"key_id": key_id, "version": version}).first()
        if row is None:
            raise KeyNotFound(key_id, version)
        return version_record(row)

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
            row = conn.execute(SELECT_KEY_FOR_UPDATE, {"key_id": key_id}).first()
            if row is None:
                raise KeyNotFound(key_id)
            change = plan(key_record(row), self._locked_epoch(conn))
            key = change.key
            if key.key_id != key_id:
                raise ValueError("a key change must keep its key_id")
            now = utc_now()
            values = key_values(key)
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
                conn.execute(insert_version(key, change.version, now))
            self._write_epoch(conn, change.epoch)
            self._announce(conn, key_id)
        self.changes.bump(key_id)
        return key

    @_translate_database_errors
    def update_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord:
        """Change a key row (state, metadata, version policy) under its write lock; ``plan`` may
        also ask to delete old versions (trim). Whatever ``plan`` raises writes nothing."""
        return self._change_key(key_id, plan)

    @_translate_database_errors
    def destroy_key(self, key_id: str, check: DestroyCheck) -> tuple[KeyRecord, list[str]]:
        """Delete a key, all its versions and its aliases if ``check`` passes on the row read
        under its write lock; returns the row destroyed and the names of the aliases deleted.

        Two callers racing to destroy the same key serialise on the lock: the second finds no
        row (``KeyNotFound``), so each key is destroyed once.
        """
        with self._write() as conn:
            row = conn.execute(SELECT_KEY_FOR_UPDATE, {"key_id": key_id}).first()
            if row is None:
                raise KeyNotFound(key_id)
            key = key_record(row)
            self._write_epoch(conn, check(key, self._locked_epoch(conn)))
            conn.execute(delete(key_versions).where(key_versions.c.key_id == key_id))
            conn.execute(delete(keys).where(keys.c.key_id == key_id))
            alias_names = delete_aliases_of(conn, key_id)
            self._announce(conn, key_id)
        self.changes.bump(key_id)
        return key, alias_names

    def reclaim_destroyed(self, *, keystore: bool = False) -> bool:
        """After a change that destroyed material has committed: leave no readable copy of the
        deleted or rewritten version rows (and, with ``keystore``, of the replaced keystore rows)
        in the database files (kms.store.reclaim). Never raises; returns whether it did."""
        tables = (key_versions, kms_metadata) if keystore else (key_versions,)
        with self._write_lock:  # this process's writers wait rather than meet a busy log
            return reclaim_freed_space(self._engine, tables)

    @_translate_database_errors
    def seal_all(
        self, seal_key: KeySealer, seal_version: VersionSealer, keystore: dict[str, bytes]
    ) -> tuple[int, int]:
        """Write the MAC of every key and version row and the keystore's rows (the init marker,
        the keystore id, the epoch), at once.

        For ``kms upgrade``: one transaction, so a failure leaves the database as it was.
        Returns the number of key rows and version rows sealed.
        """
        return self._rewrite_every_row(
            seal_key, lambda key, version: {"mac": seal_version(key, version)}, keystore
        )

    @_translate_database_errors
    def keys_with_rotation_period(self, limit: int, after: str | None) -> list[DueKey]:
        """A page of the keys that rotate by time, with their latest version's creation time."""
        query = (
            select(*KEY_COLUMNS, key_versions.c.created_at.label("latest_created_at"))
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
        return [DueKey(key_record(row), as_utc(row.latest_created_at)) for row in rows]

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
    def count_versions(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(key_versions)).scalar_one())

    @_translate_database_errors
    def rewrap_all(
        self,
        seal_key: KeySealer,
        rewrap_version: VersionRewrapper,
        keystore: dict[str, bytes],
        seal_alias: AliasSealer | None = None,
    ) -> tuple[int, int]:
        """Replace every wrapped key, every MAC (``seal_alias`` gives the alias rows') and the
        keystore's rows (the KDF parameters, the
        init marker, the epoch) at once.

        For ``kms rekey``: one write transaction, so whatever stops it part-way (an error, a kill,
        a power cut) leaves the database under the old master key, every row as it was. The
        callbacks raise to write nothing. Returns the number of key rows and version rows.
        """

        def rewrapped(key: KeyRecord, version: KeyVersionRecord) -> dict[str, object]:
            wrapped_key, mac = rewrap_version(key, version)
            return {"wrapped_key": wrapped_key, "mac": mac}

        return self._rewrite_every_row(seal_key, rewrapped, keystore, seal_alias)

    def _rewrite_every_row(
        self,
        seal_key: KeySealer,
        version_values: Callable[[KeyRecord, KeyVersionRecord], dict[str, object]],
        keystore: dict[str, bytes],
        seal_alias: AliasSealer | None = None,
    ) -> tuple[int, int]:
        """In one write transaction: each key row's new MAC, each of its version rows' new
        values, then the keystore's rows (``kms_metadata``); every node is told of every key.
        Returns the number of key rows and version rows written."""
        with self._write() as conn:
            key_rows, version_rows = rewrite_every_row(conn, seal_key, version_values, keystore)
            if seal_alias is not None:
                reseal_aliases(conn, seal_alias)
            self._announce(conn, ALL_KEYS)
        self.changes.bump_all()
        return key_rows, version_rows

    @_translate_database_errors
    def count_keys_by_state(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(keys.c.state, func.count()).group_by(keys.c.state)).all()
        return {state: count for state, count in rows}
