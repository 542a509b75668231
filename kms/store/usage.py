"""The use bookkeeping of the key repository: reserved encryptions, decryption counts and refused
uses of keys pending deletion. Counters outside the row MACs (docs/security.md), written without
the master key."""

from __future__ import annotations

from contextlib import AbstractContextManager

from sqlalchemy import Connection, Engine, and_, select, update

from kms.errors import KeyNotFound
from kms.store.guards import translate_database_errors as _translate_database_errors
from kms.store.models import key_versions, keys
from kms.store.records import KeyState, UseReport, utc_now
from kms.store.statements import RESERVE_WHOLE_BLOCK, USED_VERSIONS, add_use, used_versions_after


class UseBookkeeping:
    """Mixed into ``SQLKeyRepository``, which provides the engines and the write path."""

    _engine: Engine
    _one_statement: Engine
    _write_lock: AbstractContextManager[object]

    def _write(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

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
                        keys.c.state == KeyState.PENDING_DELETION,
                    )
                )
                .values(
                    use_attempts_while_pending=keys.c.use_attempts_while_pending + 1,
                    last_use_attempt=attempt,
                )
            )

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
                RESERVE_WHOLE_BLOCK,
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
            used: int | None = conn.execute(
                select(key_versions.c.encryptions).where(where).with_for_update()
            ).scalar_one_or_none()
            if used is None:
                raise KeyNotFound(key_id, version)
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
        """Add decryptions and encryptions made and move ``last_used_at`` forward, one UPDATE per
        version."""
        if not reports:
            return
        with self._write() as conn:
            for report in reports:
                conn.execute(add_use(report))

    @_translate_database_errors
    def use_totals(
        self, after: tuple[str, int] | None = None, limit: int | None = None
    ) -> list[tuple[str, int, int, int, int]]:
        """``(key_id, version, encryptions made, decryptions, encryptions reserved)`` of the
        versions that were used, in key order: all of them, or a page of up to ``limit`` after
        ``(key_id, version)``."""
        query = USED_VERSIONS if limit is None else used_versions_after(after, limit)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [tuple(row) for row in rows]
