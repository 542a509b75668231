"""Writes to the database on the hot path: one statement to reserve encryptions, and SQLite
writers of one node queueing for their turn in the kernel (kms.store.changes ``writer_turn``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import event

from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.changes import open_changes
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository

#: A limit far from what the tests reserve, and one they reach.
ROOMY = 1_000_000


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

    def record(_conn, _cursor, statement: str, *_args: object) -> None:  # noqa: ANN001
        seen.append(statement.split()[0].upper())

    engine = repository._engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        call()  # type: ignore[operator]
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def test_reserving_a_whole_block_is_one_update_and_no_read(
    service: KMSService, node_repositories: list[SQLKeyRepository]
) -> None:
    service.create_key("block")
    repository = node_repositories[0]
    granted: list[int] = []
    statements = statements_of(
        repository, lambda: granted.append(repository.reserve_encryptions("block", 1, 10, 1, ROOMY))
    )
    assert granted == [10]
    assert [s for s in statements if s in ("SELECT", "UPDATE")] == ["UPDATE"], statements


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


def test_a_sqlite_writer_waits_for_the_turn_another_process_of_the_node_holds(
    service: KMSService, node_repositories: list[SQLKeyRepository]
) -> None:
    service.create_key("queued")
    holder, writer = node_repositories
    done = threading.Event()

    def write() -> None:
        writer.reserve_encryptions("queued", 1, 10, 1, ROOMY)
        done.set()

    thread = threading.Thread(target=write)
    with holder.changes.writer_turn():
        thread.start()
        # The holder has not even begun a transaction: only the turn can hold the writer back.
        assert not done.wait(0.5), "the writer did not wait for its turn"
    assert done.wait(30), "the writer did not go ahead once the turn was free"
    thread.join()
