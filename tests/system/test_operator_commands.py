"""``kms backup``, ``kms restore`` and ``kms rekey`` from the command line: what they print, the
progress bar on stderr, and one-line refusals. Production KDF cost (a config file cannot lower
the floor), so one keystore serves the whole test."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from kms.backups import backup_database
from kms.errors import NotInitialised
from kms.master import (
    check_database,
    destroy_due_keys,
    init_database,
    open_master_keyring,
    rotate_due_database,
)
from kms.rekey import rekey_database
from kms.service.cache import KeyMaterialCache
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.config import write_config
from tests.helpers.harness import run_kms
from tests.helpers.keystore import TEST_PASSPHRASE, make_service, write_passphrase_file

pytestmark = pytest.mark.slow


def test_backup_restore_and_rekey_from_the_command_line(tmp_path: Path) -> None:
    settings = Settings(
        database_dsn=str(tmp_path / "kms.db"),
        master_passphrase_file=write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE),
    )
    init_database(settings)
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(0))
        service.create_key("orders")
        ciphertext = service.encrypt("orders", b"kept").ciphertext
    finally:
        repository.close()
        keyring.close()
    config = write_config(
        tmp_path / "config.yaml",
        passphrase_file=settings.master_passphrase_file,
        dsn=settings.database_dsn,
    )

    backup = tmp_path / "kms.backup"
    made = run_kms("backup", str(backup), config=config)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"kms: backed up {settings.database_dsn} to {backup}: ")
    assert "kms: backing up" in made.stderr  # the progress bar
    again = run_kms("backup", str(backup), config=config)
    assert again.returncode == 1
    assert again.stderr == f"kms: refusing to overwrite {backup}; choose a new file name\n"

    restored = Settings(
        database_dsn=str(tmp_path / "restored" / "kms.db"),
        master_passphrase_file=settings.master_passphrase_file,
    )
    restored_config = write_config(
        tmp_path / "restored.yaml",
        passphrase_file=restored.master_passphrase_file,
        dsn=restored.database_dsn,
    )
    loaded = run_kms("restore", str(backup), config=restored_config)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("kms: restored ")
    refused = run_kms("restore", str(backup), config=restored_config)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"kms: refusing to restore into {restored.database_dsn}")
    assert len(refused.stderr.splitlines()) == 1

    backup.write_bytes(backup.read_bytes()[:-10])
    (tmp_path / "other").mkdir()
    other = write_config(
        tmp_path / "other.yaml",
        passphrase_file=settings.master_passphrase_file,
        dsn=tmp_path / "other" / "kms.db",
    )
    truncated = run_kms("restore", str(backup), config=other)
    assert truncated.returncode == 1
    assert truncated.stderr.startswith(f"kms: {backup}: the backup is truncated")
    assert list((tmp_path / "other").iterdir()) == []

    new_passphrase = write_passphrase_file(tmp_path / "new.key", b"the next passphrase")
    rekeyed = run_kms("rekey", "--new-passphrase-file", str(new_passphrase), config=restored_config)
    assert rekeyed.returncode == 0, rekeyed.stderr
    assert rekeyed.stdout == (
        f"kms: rekeyed {restored.database_dsn}: 1 key versions of 1 keys re-wrapped; only the "
        "new passphrase opens it now\n"
    )
    assert "kms: re-wrapping key versions" in rekeyed.stderr
    with_new = Settings(database_dsn=restored.database_dsn, master_passphrase_file=new_passphrase)
    assert check_database(with_new).failures == []
    keyring = open_master_keyring(with_new)
    repository = SQLKeyRepository(create_kms_engine(with_new.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(0))
        assert service.decrypt("orders", ciphertext).plaintext == b"kept"
    finally:
        repository.close()
        keyring.close()
    wrong = run_kms("check", config=restored_config)  # the old passphrase
    assert wrong.returncode == 1
    assert "wrong master passphrase" in wrong.stderr


@pytest.mark.parametrize("command", ["check", "rotate-due", "destroy-due", "backup", "rekey"])
def test_another_applications_database_is_not_a_keystore_to_any_command(
    tmp_path: Path, command: str
) -> None:
    """Each operator command names a database without a keystore as such (``kms init`` is what
    it needs, not ``kms upgrade``) and changes nothing in it."""
    database = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        conn.commit()
    settings = Settings(
        database_dsn=str(database),
        master_passphrase_file=write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE),
    )
    run = {
        "check": lambda: check_database(settings),
        "rotate-due": lambda: rotate_due_database(settings),
        "destroy-due": lambda: destroy_due_keys(settings, on_destroyed=print, on_failure=print),
        "backup": lambda: backup_database(settings, tmp_path / "other.backup"),
        "rekey": lambda: rekey_database(settings, bytearray(b"another passphrase, long enough")),
    }
    with pytest.raises(NotInitialised):
        run[command]()
    with contextlib.closing(sqlite3.connect(database)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == [("invoices",)]
    assert not (tmp_path / "other.backup").exists()
