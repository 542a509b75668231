"""Writes to the database on the hot path: one statement to reserve encryptions, and a server's
SQLite commits leaving write-ahead log checkpoints to a thread beside them."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import event

from kms.app import REPOSITORY, create_app
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.changes import open_changes
from kms.store.db import SAFETY_NET_CHECKPOINT_PAGES, WALCheckpointer, create_kms_engine
from kms.store.repository import SQLKeyRepository

#: A limit far from what the tests reserve.
ROOMY = 1_000_000
#: SQLite's write-ahead log file format.
WAL_HEADER_BYTES = 32
WAL_FRAME_HEADER_BYTES = 24


@pytest.fixture
def node_repositories(initialised: Settings) -> Iterator[list[SQLKeyRepository]]:
    """Two repositories as two worker processes have them: own engine, own open counters file."""
    url = initialised.database_url
    repositories = [
        SQLKeyRepository(create_kms_engine(url), open_changes(url, create=True)) for _ in range(2)
    ]
    yield repositories
    for repository in repositories:
        repository.close()


def statements_of(repository: SQLKeyRepository, call: object) -> list[str]:
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement.split()[0].upper())

    engine = repository._engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        call()  # type: ignore[operator]
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def test_reserving_a_whole_block_is_one_statement_with_no_transaction_around_it(
    service: KMSService, node_repositories: list[SQLKeyRepository]
) -> None:
    service.create_key("block")
    repository = node_repositories[0]
    granted: list[int] = []
    statements = statements_of(
        repository, lambda: granted.append(repository.reserve_encryptions("block", 1, 10, 1, ROOMY))
    )
    assert granted == [10]
    assert statements == ["UPDATE"], statements


def test_near_the_limit_what_is_left_is_granted_and_then_nothing(
    service: KMSService, node_repositories: list[SQLKeyRepository]
) -> None:
    service.create_key("nearly")
    repository = node_repositories[0]
    assert repository.reserve_encryptions("nearly", 1, 8, 1, 10) == 8
    assert repository.reserve_encryptions("nearly", 1, 8, 1, 10) == 2
    assert repository.reserve_encryptions("nearly", 1, 8, 1, 10) == 0
    # ``at_least`` more than is left: nothing, and nothing counted.
    assert repository.reserve_encryptions("nearly", 1, 8, 1, 12) == 2
    assert repository.reserve_encryptions("nearly", 1, 8, 3, 13) == 0
    assert repository.reserve_encryptions("nearly", 1, 8, 1, 13) == 1


def write_transactions(repository: SQLKeyRepository, key_id: str, count: int) -> None:
    for _ in range(count):
        repository.reserve_encryptions(key_id, 1, 1, 1, ROOMY)


def wal_frames(settings: Settings) -> int:
    """How many frames the write-ahead log file holds: it only grows until a checkpoint lets
    writers start it over (reading it through SQLite would be a checkpoint itself)."""
    database = Path(settings.database_dsn)
    wal = database.with_name(database.name + "-wal")
    with closing(sqlite3.connect(database)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return (wal.stat().st_size - WAL_HEADER_BYTES) // (WAL_FRAME_HEADER_BYTES + page_size)


def test_a_server_engine_leaves_checkpoints_to_its_checkpointer(
    service: KMSService, initialised: Settings
) -> None:
    """A commit past 1,000 pages of log would copy them into the database and sync it while
    holding the write lock; a server's commits leave that to its WALCheckpointer, beside them
    (unless the log passes SAFETY_NET_CHECKPOINT_PAGES: the checkpointer has failed)."""
    service.create_key("logged")
    url = initialised.database_url
    engine = create_kms_engine(url, background_checkpoints=True)
    repository = SQLKeyRepository(engine, open_changes(url, create=True))
    checkpointer = WALCheckpointer(engine, interval=0.05)
    try:
        write_transactions(repository, "logged", 1200)
        frames = wal_frames(initialised)
        assert frames > 1000, frames
        checkpointer.start()
        deadline = time.monotonic() + 30
        while checkpointer.last is None or checkpointer.last[1] != checkpointer.last[2]:
            assert time.monotonic() < deadline, checkpointer.last
            time.sleep(0.02)
        assert checkpointer.last[1] >= frames
    finally:
        checkpointer.stop()
        repository.close()


def test_other_engines_checkpoint_as_sqlite_does_by_default(
    service: KMSService, initialised: Settings
) -> None:
    """Commands (no checkpointer) keep SQLite's own checkpoints: the log never grows far past
    1,000 pages."""
    service.create_key("commands")
    url = initialised.database_url
    engine = create_kms_engine(url)
    repository = SQLKeyRepository(engine, open_changes(url))
    try:
        write_transactions(repository, "commands", 1200)
        frames = wal_frames(initialised)
        assert frames < 1100, frames
    finally:
        repository.close()


def test_a_server_worker_runs_a_checkpointer_and_stops_it_on_close(
    initialised: Settings, keyring: RootKeyring
) -> None:
    before = set(threading.enumerate())
    app = create_app(initialised, keyring=keyring)
    started = [
        thread
        for thread in threading.enumerate()
        if thread not in before and thread.name == "kms-wal-checkpoint"
    ]
    assert len(started) == 1
    with app.extensions[REPOSITORY]._engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    assert pages == SAFETY_NET_CHECKPOINT_PAGES
    app.extensions[REPOSITORY].close()
    assert not started[0].is_alive()
