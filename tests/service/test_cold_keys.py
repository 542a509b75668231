"""The first use of a key on a worker (a cold key): what it reads and writes.

A worker that has not seen a key yet reads the key row and its latest version row in one
statement, and an encryption also reserves a block of the version's encryptions in one more:
two statements in all. A version row read that way is used only with
the very key row it was read with, and the rows read but not used are bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from kms.master import init_database, open_master_keyring
from kms.service.cache import KeyMaterialCache, KeyRowCache
from kms.service.keyring import RootKeyring
from kms.service.keys import trust as trust_module
from kms.settings import Settings
from kms.store.changes import open_changes
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import make_service, make_settings


class Worker:
    """A service as a server worker has it (row cache on), with a statement log."""

    def __init__(self, settings: Settings, keyring: RootKeyring) -> None:
        self.engine = create_kms_engine(settings.database_url)
        # The change counters a server makes: each worker sees the other's writes at once.
        self.repository = SQLKeyRepository(
            self.engine, open_changes(settings.database_url, create=True)
        )
        self.cache = KeyMaterialCache(1024)
        self.service = make_service(
            self.repository,
            keyring,
            self.cache,
            rows=KeyRowCache(1000, self.repository.change_mark),
        )
        self.statements: list[str] = []
        event.listen(self.engine, "before_cursor_execute", self._record)

    def _record(self, _conn: object, _cursor: object, statement: str, *_args: object) -> None:
        self.statements.append(" ".join(statement.split()[:1]).upper())

    def close(self) -> None:
        self.repository.close()


@pytest.fixture
def two_workers(initialised: Settings, keyring: RootKeyring) -> Iterator[list[Worker]]:
    workers = [Worker(initialised, keyring) for _ in range(2)]
    yield workers
    for worker in workers:
        worker.close()


def test_a_cold_encrypt_is_one_read_and_one_write(
    two_workers: list[Worker],
) -> None:
    maker, cold = two_workers
    maker.service.create_key("cold")
    cold.statements.clear()
    cold.service.encrypt("cold", b"secret")
    assert [s for s in cold.statements if s in ("SELECT", "UPDATE", "INSERT")] == [
        "SELECT",
        "UPDATE",
    ], cold.statements
    # Warm: nothing read, nothing written (the reserved block still has encryptions left).
    cold.statements.clear()
    cold.service.encrypt("cold", b"secret")
    assert cold.statements == []


def test_a_cold_sign_and_verify_read_one_statement_each_worker(
    two_workers: list[Worker],
) -> None:
    maker, cold = two_workers
    maker.service.create_key("signer", "sign", "Ed25519")
    signature = maker.service.sign("signer", b"message").signature
    cold.statements.clear()
    assert cold.service.verify("signer", b"message", signature).valid
    assert cold.statements == ["SELECT"], cold.statements


def test_a_version_read_with_an_older_key_row_is_not_used_with_a_newer_one(
    two_workers: list[Worker],
) -> None:
    """Worker ``cold`` reads the key and its version 1 together but does not use that version;
    the key is then recreated by the other worker. ``cold`` sees the change (the counters),
    reads the new row, and encrypts under the new incarnation, never with the version row it
    read with the old one: the ciphertext decrypts on the other worker."""
    maker, cold = two_workers
    maker.service.create_key("again")
    cold.service.get_key("again")  # not the hot path: nothing kept
    cold.service.trust.read("again")  # the hot path's read: version 1 kept for the next use
    maker.service.recreate_key("again")
    encrypted = cold.service.encrypt("again", b"secret")
    assert maker.service.decrypt("again", encrypted.ciphertext).plaintext == b"secret"


def test_version_rows_read_and_not_used_are_bounded(
    two_workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trust_module, "PREFETCHED_VERSIONS_LIMIT", 3)
    maker, cold = two_workers
    for index in range(6):
        key_id = f"rotated-{index}"
        maker.service.create_key(key_id)
        old = maker.service.encrypt(key_id, b"secret").ciphertext
        maker.service.rotate_key(key_id)
        # Decrypting version 1 leaves the latest version, read with the row, unused.
        assert cold.service.decrypt(key_id, old).plaintext == b"secret"
        assert cold.service.trust.prefetched_count() <= 3
    assert cold.service.trust.prefetched_count()


def test_a_destroyed_or_recreated_key_leaves_no_version_row_behind(
    two_workers: list[Worker],
) -> None:
    """Version rows read with a key row and not used (a decrypt of an older version) hold
    wrapped key material: a destroy or recreate on that worker drops them with its cache."""
    maker, cold = two_workers
    for key_id in ("destroyed", "recreated"):
        maker.service.create_key(key_id)
        old = maker.service.encrypt(key_id, b"secret").ciphertext
        maker.service.rotate_key(key_id)
        cold.service.decrypt(key_id, old)
        assert cold.service.trust.prefetched_count(key_id)
    cold.service.delete_key("destroyed")
    cold.service.recreate_key("recreated")
    assert cold.service.trust.prefetched_count("destroyed") == 0
    assert cold.service.trust.prefetched_count("recreated") == 0


def test_a_cold_encrypt_counts_one_cache_miss(two_workers: list[Worker]) -> None:
    """The read looks into the material cache to decide whether to keep the version row, without
    counting that as a lookup: the hit ratio of /metrics counts the operation's own lookup."""
    maker, cold = two_workers
    maker.service.create_key("counted")
    cache = cold.cache
    misses, hits = cache.misses, cache.hits
    cold.service.encrypt("counted", b"secret")
    assert (cache.misses - misses, cache.hits - hits) == (1, 0)


def test_on_postgresql_a_cold_encrypt_is_two_statements_each_its_own_transaction(
    postgres_url: str, tmp_path: Path
) -> None:
    """In autocommit: no BEGIN before and no COMMIT or ROLLBACK after either statement (each a
    round trip to the server; a single statement needs no transaction around it)."""
    settings = make_settings(tmp_path, postgres_url)
    init_database(settings)
    keyring = open_master_keyring(settings)
    maker, cold = Worker(settings, keyring), Worker(settings, keyring)
    try:
        maker.service.create_key("remote")
        autocommit: list[bool] = []

        def record(conn: object, *_args: object) -> None:
            autocommit.append(conn.connection.dbapi_connection.autocommit)

        event.listen(cold.engine, "before_cursor_execute", record)
        cold.statements.clear()
        cold.service.encrypt("remote", b"secret")
        assert cold.statements == ["SELECT", "UPDATE"]
        assert autocommit == [True, True]
        # And what the reservation counted is there for every other process.
        assert maker.repository.reserve_encryptions("remote", 1, 1, 1, 2**32) == 1
        with maker.engine.connect() as conn:
            used = conn.exec_driver_sql(
                "SELECT encryptions FROM key_versions WHERE key_id = 'remote'"
            ).scalar()
        assert used > 1
    finally:
        maker.close()
        cold.close()
        keyring.close()
