"""Keystore binding: a row made in another keystore is refused, even one restored from this
keystore's own backup (which shares its master key), and ``kms restore --as-clone`` makes a
keystore of its own. SQLite and, given --postgres-dsn, PostgreSQL; rows moved with SQL behind
kms's back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from kms.backups import backup_database, restore_database
from kms.errors import IntegrityFailure, InvalidBackup, WrongPassphrase
from kms.master import check_database, open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.backups import open_backup, seal_backup
from tests.helpers.keystore import Store, make_service, write_passphrase_file
from tests.helpers.postgres import given_postgres_dsn, new_database

CLONE_PASSPHRASE = b"the clone's own passphrase, for staging"


@pytest.fixture
def clone_dsn(request: pytest.FixtureRequest, store: Store, tmp_path: Path) -> Iterator[str]:
    """Where the clone goes: beside the original, on the same kind of database (PostgreSQL: a
    second new database, not the store's own)."""
    if store.settings.database_url.startswith("sqlite"):
        yield str(tmp_path / "clone" / "kms.db")
        return
    with new_database(given_postgres_dsn(request.config)) as url:
        yield url


class Opened:
    def __init__(self) -> None:
        self.closing: list[Any] = []

    def service(self, settings: Settings) -> KMSService:
        keyring = open_master_keyring(settings)
        repository = SQLKeyRepository(create_kms_engine(settings.database_url))
        self.closing += [repository, keyring]
        return make_service(repository, keyring, KeyMaterialCache(64))


@pytest.fixture
def opened() -> Iterator[Opened]:
    holder = Opened()
    yield holder
    for thing in holder.closing:
        thing.close()


def copy_key(source: Settings, target: Settings, key_id: str) -> None:
    """Every row of ``key_id`` from ``source`` into ``target``, replacing target's: the
    transplant."""
    src = create_kms_engine(source.database_url, pool=False)
    dst = create_kms_engine(target.database_url, pool=False)
    try:
        with src.connect() as conn:
            key = dict(
                conn.execute(text("SELECT * FROM keys WHERE key_id = :k"), {"k": key_id})
                .one()
                ._mapping
            )
            versions = [
                dict(row._mapping)
                for row in conn.execute(
                    text("SELECT * FROM key_versions WHERE key_id = :k"), {"k": key_id}
                )
            ]
        with dst.begin() as conn:
            conn.execute(text("DELETE FROM key_versions WHERE key_id = :k"), {"k": key_id})
            conn.execute(text("DELETE FROM keys WHERE key_id = :k"), {"k": key_id})
            for table, row in [("keys", key)] + [("key_versions", v) for v in versions]:
                names = ", ".join(row)
                values = ", ".join(f":{name}" for name in row)
                conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({values})"), row)  # noqa: S608
    finally:
        src.dispose()
        dst.dispose()


def test_a_row_from_a_restored_clone_is_refused_in_the_original(
    store: Store, clone_dsn: str, tmp_path: Path, opened: Opened
) -> None:
    original = opened.service(store.settings)
    original.create_key("shared")
    original.create_alias("alias/team/shared", "shared")
    ciphertext = original.encrypt("shared", b"before the backup").ciphertext
    backup_database(store.settings, tmp_path / "kms.backup")

    clone_settings = store.settings.with_overrides(database_dsn=clone_dsn)
    restore_database(
        clone_settings, tmp_path / "kms.backup", clone_passphrase=bytearray(CLONE_PASSPHRASE)
    )
    clone_settings = clone_settings.with_overrides(
        master_passphrase_file=write_passphrase_file(tmp_path / "clone.key", CLONE_PASSPHRASE)
    )
    # The clone opens with its own passphrase only, and holds what the backup held.
    with pytest.raises(WrongPassphrase):
        open_master_keyring(
            clone_settings.with_overrides(
                master_passphrase_file=store.settings.master_passphrase_file
            )
        )
    clone = opened.service(clone_settings)
    assert clone.decrypt("shared", ciphertext).plaintext == b"before the backup"
    # Its alias came along, re-sealed under the clone's keystore.
    assert clone.resolve_alias("alias/team/shared") == "shared"
    assert check_database(clone_settings).failures == []

    # On the clone, someone disables key checks for staging: rotates, sets a long limit...
    clone.update_key("shared", description="staging", max_encryptions_per_version=2**32)
    clone.create_key("planted")
    # ...and copies the rows into production. Refused there: another keystore's MACs.
    copy_key(clone_settings, store.settings, "shared")
    copy_key(clone_settings, store.settings, "planted")
    for key_id in ("shared", "planted"):
        with pytest.raises(IntegrityFailure):
            opened.service(store.settings).encrypt(key_id, b"x")
    failures = check_database(store.settings).failures
    assert "key 'shared': key row: MAC does not match" in failures
    assert "key 'planted': key row: MAC does not match" in failures


def test_the_clone_cannot_unwrap_what_the_original_wraps_afterwards(
    store: Store, clone_dsn: str, tmp_path: Path, opened: Opened
) -> None:
    original = opened.service(store.settings)
    original.create_key("orders")
    backup_database(store.settings, tmp_path / "kms.backup")
    clone_settings = store.settings.with_overrides(database_dsn=clone_dsn)
    restore_database(
        clone_settings, tmp_path / "kms.backup", clone_passphrase=bytearray(CLONE_PASSPHRASE)
    )
    clone_settings = clone_settings.with_overrides(
        master_passphrase_file=write_passphrase_file(tmp_path / "clone.key", CLONE_PASSPHRASE)
    )
    original.rotate_key("orders")
    secret = original.encrypt("orders", b"after the clone").ciphertext
    # Production's new version row, copied into the clone, does not unwrap there.
    copy_key(store.settings, clone_settings, "orders")
    with pytest.raises(IntegrityFailure):
        opened.service(clone_settings).decrypt("orders", secret)


def test_a_plain_restore_refuses_a_backup_whose_keystore_id_was_swapped(
    store: Store, clone_dsn: str, tmp_path: Path, opened: Opened
) -> None:
    """The keystore id binds the init marker and the backup tag: editing it is refused, even
    inside a document sealed again with the keystore's own keys (an edit of the cleartext
    header's id does not decrypt: tests/service/test_backup.py)."""
    opened.service(store.settings).create_key("k")
    backup = tmp_path / "kms.backup"
    backup_database(store.settings, backup)
    lines = open_backup(store.settings, backup.read_bytes()).splitlines(keepends=True)
    edited = [
        line.replace(
            b'"name":"keystore_id","value":{"b64":"', b'"name":"keystore_id","value":{"b64":"AA'
        )
        for line in lines
    ]
    assert edited != lines
    (tmp_path / "edited.backup").write_bytes(seal_backup(store.settings, b"".join(edited)))
    with pytest.raises(InvalidBackup):
        restore_database(
            store.settings.with_overrides(database_dsn=clone_dsn), tmp_path / "edited.backup"
        )
