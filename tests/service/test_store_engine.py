"""The database engine's promises: parameters hidden in errors, WAL on SQLite, and a rotation
that reads and writes the key's row on its one connection."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.records import KeyChange, KeyRecord, NewVersion
from kms.store.repository import SQLKeyRepository

SECRET_PARAMETER = "c2VjcmV0LXdyYXBwZWQta2V5LW1hdGVyaWFs"


def _failing_statement_error(url: str) -> DBAPIError:
    engine = create_kms_engine(url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as excinfo:
            conn.execute(
                text("SELECT * FROM no_such_table WHERE x = :value"), {"value": SECRET_PARAMETER}
            )
    finally:
        engine.dispose()
    return excinfo.value


def test_sqlite_errors_hide_statement_parameters(initialised: Settings) -> None:
    error = _failing_statement_error(initialised.database_url)
    assert "no_such_table" in str(error)  # the control: this is the error of our statement
    assert SECRET_PARAMETER not in str(error)
    assert SECRET_PARAMETER not in repr(error)
    assert "hidden" in str(error)


def test_postgres_errors_hide_statement_parameters(postgres_url: str) -> None:
    error = _failing_statement_error(postgres_url)
    assert "no_such_table" in str(error)
    assert SECRET_PARAMETER not in str(error)
    assert SECRET_PARAMETER not in repr(error)


def test_postgres_connections_carry_the_application_name(postgres_url: str) -> None:
    """kms.store.serving finds running kms servers by ``application_name`` in
    pg_stat_activity, so the name must reach PostgreSQL. Found by ``make mutants``."""
    for name, expected in (("kms-server", "kms-server"), (None, "")):
        engine = create_kms_engine(postgres_url, application_name=name)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SHOW application_name")).scalar() == expected
        finally:
            engine.dispose()


def test_a_pooled_postgres_connection_that_died_is_replaced_unseen(postgres_url: str) -> None:
    """A PostgreSQL restart or failover kills the pooled connections; the next request must
    get a fresh one (``pool_pre_ping``), not an error. Found by ``make mutants``.

    Terminating another session's backend needs pg_signal_backend (CI grants it to kms_test).
    """
    engine = create_kms_engine(postgres_url)
    killer = create_kms_engine(postgres_url, pool=False)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with killer.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
        deadline = time.monotonic() + 10  # the backend exits asynchronously
        with killer.connect() as conn:
            while conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar():
                assert time.monotonic() < deadline, "the backend did not exit"
                # pg_stat_activity is a snapshot per transaction: end it to see the change.
                conn.rollback()
                time.sleep(0.05)
        with engine.connect() as conn:  # the pool's one connection is the dead one
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()
        killer.dispose()


def test_kms_init_leaves_the_sqlite_file_in_wal_mode(initialised: Settings) -> None:
    database = Path(initialised.database_url.removeprefix("sqlite:///"))
    # Asked of SQLite directly, on a connection kms did not configure.
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    # And persisted in the file itself: header bytes 18 and 19 are 2 in WAL mode, 1 otherwise.
    assert database.read_bytes()[18:20] == b"\x02\x02"


def test_sqlite_connections_enforce_foreign_keys_and_wait_for_the_writer(
    initialised: Settings,
) -> None:
    """Each connection kms opens: foreign keys on, synchronous=NORMAL (safe in WAL mode), and a
    30 s busy timeout, so a second writer queues instead of failing with "database is locked".

    Found by ``make mutants``: dropping any of these PRAGMAs, or changing the timeout, went
    unseen (no test holds the write lock for long enough to notice).
    """
    engine = create_kms_engine(initialised.database_url)
    try:
        with engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("foreign_keys", "synchronous", "busy_timeout")
            }
    finally:
        engine.dispose()
    assert pragmas == {"foreign_keys": 1, "synchronous": 1, "busy_timeout": 30_000}


@pytest.fixture
def checkouts(repository: SQLKeyRepository) -> Iterator[list[Any]]:
    """Every connection the repository's engine hands out while the test runs."""
    engine = repository._engine  # the one pool behind both the reader and the writer
    seen: list[Any] = []

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        seen.append(dbapi_connection)

    event.listen(engine, "checkout", on_checkout)
    yield seen
    event.remove(engine, "checkout", on_checkout)


def test_a_rotation_reads_and_writes_on_one_connection(
    service: KMSService, repository: SQLKeyRepository, checkouts: list[Any]
) -> None:
    """The version number comes from the UPDATE of the key's row, inside the write transaction.

    On PostgreSQL a read of ``latest_version`` on a second connection sees the row outside the
    lock the UPDATE takes, so two rotations can pick the same number; SQLite's BEGIN IMMEDIATE
    hides that race (the whole database is locked), so here the mechanism itself is checked:
    the repository's rotation takes exactly one connection.
    """
    service.create_key("one-connection", "encrypt", "AES-256-GCM")
    checkouts.clear()

    def plan(current: KeyRecord, _epoch: bytes | None) -> KeyChange:
        assert len(checkouts) == 1, "the version was fixed after a second connection was taken"
        version = current.latest_version + 1
        return KeyChange(
            key=replace(current, latest_version=version),
            version=NewVersion(wrapped_key=f"wrapped-{version}".encode(), public_key=None, mac=b""),
        )

    rotated = repository.rotate_key("one-connection", plan)
    assert rotated.latest_version == 2
    assert len(checkouts) == 1
    assert [v.version for v in repository.list_versions("one-connection")] == [1, 2]
