"""Anti-rollback memory (kms.service.keys.generations.Generations), in process, without a
database: a row older than a generation the node has seen is refused, whether this process read
the newer row itself or another process of the node recorded it in the shared journal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kms.errors import RolledBack
from kms.service.keys.generations import Generations
from kms.store.generations import GenerationJournal
from kms.store.records import KeyRecord

KEYSTORE_ID = bytes(range(16))


def row(generation: int) -> KeyRecord:
    return KeyRecord(
        key_id="billing",
        purpose="encrypt",
        algorithm="aes-256-gcm",
        state="enabled",
        latest_version=1,
        incarnation="0" * 32,
        created_at=datetime(2026, 12, 7, tzinfo=UTC),
        generation=generation,
    )


def test_a_row_older_than_one_this_process_read_is_a_rollback() -> None:
    generations = Generations()
    generations.observe(row(5))  # a newer row, written by another node: remembered
    generations.observe(row(5))
    with pytest.raises(RolledBack) as refused:
        generations.observe(row(3))
    assert "older than generation 5" in refused.value.detail


def test_a_row_older_than_one_another_process_recorded_is_a_rollback(tmp_path: Path) -> None:
    path = tmp_path / "generations"
    worker = Generations(GenerationJournal(path, KEYSTORE_ID))
    other = Generations(GenerationJournal(path, KEYSTORE_ID))
    try:
        other.observe(row(2))
        worker.observe(row(2))
        other.remember(row(7))  # another worker of the node changed the key

        worker.refresh()  # before this worker's next database read
        with pytest.raises(RolledBack) as refused:
            worker.observe(row(2), since=worker.mark())
        assert "older than generation 7" in refused.value.detail
    finally:
        worker.close()
        other.close()
