"""A rotation or a recreate checks the key row's MAC again once it holds the row's write lock.

Fresh material is made before the write transaction (an RSA key takes a while), so the row the
operation first read and checked may change before the lock is taken. Someone who can write to
the database but does not know the master key changes it in that window (the service's
``after_generation`` hook, which runs exactly there); kms must refuse the row rather than seal it
again with a valid MAC of its own, and write nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kms.errors import IntegrityFailure, KeyChanged
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.records import utc_now
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import make_service

KEY_ID = "guarded"
#: Columns under the row's MAC, each changed to a value kms would accept had it written it.
TAMPERING = {
    "description": "UPDATE keys SET description = 'changed behind kms' WHERE key_id = :key_id",
    "use limit": "UPDATE keys SET max_encryptions_per_version = 4294967296 WHERE key_id = :key_id",
    "labels": """UPDATE keys SET labels = '{"owner":"mallory"}' WHERE key_id = :key_id""",
}


@dataclass(frozen=True)
class Snapshot:
    key: dict[str, Any]
    versions: list[dict[str, Any]]


class Database:
    """The keystore's SQLite file, read and written behind kms's back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def execute(self, statement: str, **params: Any) -> None:
        with closing(sqlite3.connect(self.path)) as conn, conn:
            changed = conn.execute(statement, params).rowcount
        assert changed == 1, statement

    def snapshot(self) -> Snapshot:
        """The key row and its version rows as stored, every column."""
        with closing(sqlite3.connect(self.path)) as conn:
            conn.row_factory = sqlite3.Row
            key = conn.execute("SELECT * FROM keys WHERE key_id = ?", (KEY_ID,)).fetchone()
            versions = conn.execute(
                "SELECT * FROM key_versions WHERE key_id = ? ORDER BY version", (KEY_ID,)
            ).fetchall()
        return Snapshot(key=dict(key), versions=[dict(version) for version in versions])


@pytest.fixture
def database(initialised: Settings) -> Database:
    return Database(Path(initialised.database_dsn))


@pytest.fixture
def build_service(
    initialised: Settings, keyring: RootKeyring
) -> Iterator[Callable[..., KMSService]]:
    """Services on the keystore, each with its own engine and an empty cache."""
    repositories: list[SQLKeyRepository] = []

    def build(**keywords: Any) -> KMSService:
        repository = SQLKeyRepository(create_kms_engine(initialised.database_url))
        repositories.append(repository)
        return make_service(repository, keyring, KeyMaterialCache(1024), **keywords)

    yield build
    for repository in repositories:
        repository.close()


def tamper_after_generation(
    database: Database, statement: str, snapshots: list[Snapshot]
) -> Callable[[str], None]:
    """The hook: change the row once the material is made, and keep the row as it then is."""

    def hook(key_id: str) -> None:
        assert key_id == KEY_ID
        database.execute(statement, key_id=key_id)
        snapshots.append(database.snapshot())

    return hook


def assert_not_resealed(database: Database, tampered: Snapshot, service: KMSService) -> None:
    """Nothing was written after the change: no new version, no new MAC over the changed row,
    which kms therefore still refuses."""
    assert database.snapshot() == tampered
    with pytest.raises(IntegrityFailure):
        service.get_key(KEY_ID)


@pytest.mark.parametrize("statement", TAMPERING.values(), ids=TAMPERING.keys())
@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "Ed25519"])
def test_rotate_refuses_a_row_changed_before_its_lock(
    build_service: Callable[..., KMSService], database: Database, statement: str, algorithm: str
) -> None:
    purpose = "sign" if algorithm == "Ed25519" else "encrypt"
    build_service().create_key(KEY_ID, purpose, algorithm)
    snapshots: list[Snapshot] = []
    racing = build_service(after_generation=tamper_after_generation(database, statement, snapshots))
    with pytest.raises(IntegrityFailure):
        racing.rotate_key(KEY_ID)
    [tampered] = snapshots
    assert tampered.key["latest_version"] == 1
    assert [version["version"] for version in tampered.versions] == [1]
    assert_not_resealed(database, tampered, build_service())


@pytest.mark.parametrize("statement", TAMPERING.values(), ids=TAMPERING.keys())
def test_recreate_refuses_a_row_changed_before_its_lock(
    build_service: Callable[..., KMSService], database: Database, statement: str
) -> None:
    setup = build_service()
    setup.create_key(KEY_ID)
    setup.rotate_key(KEY_ID)
    before = database.snapshot()
    snapshots: list[Snapshot] = []
    racing = build_service(after_generation=tamper_after_generation(database, statement, snapshots))
    with pytest.raises(IntegrityFailure):
        racing.recreate_key(KEY_ID)
    [tampered] = snapshots
    assert tampered.key["incarnation"] == before.key["incarnation"]
    assert tampered.versions == before.versions  # both versions, untouched
    assert_not_resealed(database, tampered, build_service())


def test_a_rotation_for_the_use_limit_refuses_a_row_changed_before_its_lock(
    build_service: Callable[..., KMSService], database: Database
) -> None:
    build_service().create_key(KEY_ID, max_encryptions_per_version=1)
    snapshots: list[Snapshot] = []
    racing = build_service(
        after_generation=tamper_after_generation(database, TAMPERING["use limit"], snapshots)
    )
    assert racing.encrypt(KEY_ID, b"the only one").version == 1
    with pytest.raises(IntegrityFailure):
        racing.encrypt(KEY_ID, b"one too many: rotates")
    [tampered] = snapshots
    assert_not_resealed(database, tampered, build_service())


def test_a_due_rotation_refuses_a_row_changed_before_its_lock(
    build_service: Callable[..., KMSService], database: Database
) -> None:
    build_service().create_key(KEY_ID, rotation_period="1h")
    snapshots: list[Snapshot] = []
    racing = build_service(
        after_generation=tamper_after_generation(database, TAMPERING["description"], snapshots)
    )
    with pytest.raises(IntegrityFailure):
        racing.rotate_due(now=utc_now() + timedelta(hours=2))
    [tampered] = snapshots
    assert_not_resealed(database, tampered, build_service())


def test_a_rotation_whose_key_kms_recreated_before_its_lock_is_refused(
    build_service: Callable[..., KMSService],
) -> None:
    """Not an edit behind kms but a change kms made (a recreate by another worker, its row
    sealed): the material generated for the old incarnation is not written into the new one
    (KeyChanged, retried by the client); the recreated key is left as the recreate made it."""
    build_service().create_key(KEY_ID)
    other = build_service()

    def recreate(key_id: str) -> None:
        other.recreate_key(key_id)

    racing = build_service(after_generation=recreate)
    with pytest.raises(KeyChanged):
        racing.rotate_key(KEY_ID)
    key = build_service().get_key(KEY_ID)
    assert key.version == 1
    ciphertext = build_service().encrypt(KEY_ID, b"after the recreate").ciphertext
    assert build_service().decrypt(KEY_ID, ciphertext).plaintext == b"after the recreate"
