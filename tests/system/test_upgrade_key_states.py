"""A database made by the release before key states (schema 0002, rows MAC'd) upgrades in place.

The old database is made by that release's own code, taken from git history (``PREVIOUS_RELEASE``,
main before issue 8) and run in a child process, as in ``test_upgrade.py``. Migration 0003 adds
the key-state columns with the record's defaults, so every MAC the old release wrote stays valid:
``kms upgrade`` only migrates, writes no MAC, and every key keeps working and gains the new
behaviour. Runs on SQLite and, given --postgres-dsn, on PostgreSQL.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from kms.backups import backup_database
from kms.errors import FencedCiphertext, KeyDisabled, KeyPendingDeletion, UpgradeNeeded
from kms.master import (
    check_database,
    destroy_due_keys,
    open_master_keyring,
    rotate_due_database,
)
from kms.rekey import rekey_database
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.schema import current_revision, head_revision
from kms.upgrade import upgrade_database
from tests.helpers.keystore import (
    TEST_ITERATIONS,
    TEST_PASSPHRASE,
    write_passphrase_file,
)
from tests.helpers.old_release import extract_release, run_in_release

#: Main before issue 8: row MACs (issue 14), schema revision 0002.
PREVIOUS_RELEASE = "58f21ca4d204687abcae924dcf23fe0eb97ea1a9"
PREVIOUS_REVISION = "0002"

OLD_RELEASE_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    old, dsn, passphrase_file, iterations = sys.argv[1:]
    sys.path.insert(0, old)
    import kms
    assert kms.__file__.startswith(old), kms.__file__

    from kms.master import init_database, open_master_keyring
    from kms.service.cache import KeyMaterialCache
    from kms.service.keys import KMSService
    from kms.settings import Settings
    from kms.store.db import create_kms_engine
    from kms.store.repository import SQLKeyRepository

    settings = Settings(
        database_dsn=dsn,
        master_passphrase_file=Path(passphrase_file),
        kdf_iterations=int(iterations),
        insecure_test_kdf_floor=int(iterations),
    )
    init_database(settings)
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    service = KMSService(repository, keyring, KeyMaterialCache(16))
    service.create_key("orders", "encrypt", "AES-256-GCM")
    first = service.encrypt("orders", b"under version 1").ciphertext
    service.rotate_key("orders")
    second = service.encrypt("orders", b"under version 2").ciphertext
    service.create_key("releases", "sign", "Ed25519")
    signed = service.sign("releases", b"message").signature.hex()
    service.create_key("recreated")
    service.recreate_key("recreated")
    repository.close()
    keyring.close()
    print(json.dumps({"orders": [first, second], "releases": signed}))
    """
)


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_release(PREVIOUS_RELEASE, tmp_path_factory.mktemp("release-before-key-states"))


@pytest.fixture(params=["sqlite", "postgresql"])
def old_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    dsn = (
        str(tmp_path / "old.db")
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    return Settings(
        database_dsn=dsn,
        master_passphrase_file=write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE),
        kdf_iterations=TEST_ITERATIONS,
        insecure_test_kdf_floor=TEST_ITERATIONS,
    )


def make_old_database(previous_release: Path, settings: Settings) -> dict[str, Any]:
    return run_in_release(previous_release, OLD_RELEASE_SCRIPT, settings, TEST_ITERATIONS)


def rows(settings: Settings, statement: str) -> list[tuple[Any, ...]]:
    engine = create_kms_engine(settings.database_url, pool=False)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(statement))]
    finally:
        engine.dispose()


@pytest.fixture
def new_service(old_settings: Settings, open_service: Any) -> Callable[[], KMSService]:
    """A service on the upgraded database (``old_settings``), closed after the test."""
    return lambda: open_service(old_settings)


def test_a_database_of_the_previous_release_upgrades_in_place_and_its_keys_keep_working(
    previous_release: Path, old_settings: Settings, new_service: Any, tmp_path: Path
) -> None:
    made = make_old_database(previous_release, old_settings)
    engine = create_kms_engine(old_settings.database_url, pool=False)
    try:
        assert current_revision(engine) == PREVIOUS_REVISION
    finally:
        engine.dispose()
    versions_before = rows(
        old_settings, "SELECT key_id, version, wrapped_key, mac FROM key_versions ORDER BY 1, 2"
    )
    macs_before = rows(old_settings, "SELECT key_id, mac FROM keys ORDER BY key_id")
    assert len(versions_before) == 4 and all(mac is not None for _, mac in macs_before)

    with pytest.raises(UpgradeNeeded) as excinfo:  # not served before the upgrade
        open_master_keyring(old_settings)
    assert "kms upgrade" in excinfo.value.public_message
    # Nor touched by any other operator command: each says to run `kms upgrade` first.
    for command in (
        lambda: check_database(old_settings),
        lambda: rotate_due_database(old_settings),
        lambda: destroy_due_keys(old_settings, on_destroyed=print, on_failure=print),
        lambda: rekey_database(old_settings, bytearray(b"a new passphrase for the old one")),
        lambda: backup_database(old_settings, tmp_path / "before-upgrade.backup"),
    ):
        with pytest.raises(UpgradeNeeded, match="run `kms upgrade`"):
            command()
    assert not (tmp_path / "before-upgrade.backup").exists()

    result = upgrade_database(old_settings)
    assert result.migrated == (PREVIOUS_REVISION, head_revision())
    # Every MAC verified, then bound to the new keystore id (format 2).
    assert (result.sealed_keys, result.sealed_versions, result.already_current) == (
        len(macs_before),
        len(versions_before),
        False,
    )
    assert upgrade_database(old_settings).already_current  # a second run changes nothing
    # In place: every wrapped key is the one the old release wrote; every MAC is new.
    after = rows(
        old_settings, "SELECT key_id, version, wrapped_key, mac FROM key_versions ORDER BY 1, 2"
    )
    assert [row[:3] for row in after] == [row[:3] for row in versions_before]
    assert all(bytes(row[3])[:1] == b"\x02" for row in after)
    key_macs = rows(old_settings, "SELECT key_id, mac FROM keys ORDER BY key_id")
    assert [row[0] for row in key_macs] == [row[0] for row in macs_before]
    assert all(bytes(row[1])[:1] == b"\x02" for row in key_macs)
    assert check_database(old_settings).failures == []

    service = new_service()
    orders = service.get_key("orders")
    assert (orders.state, orders.description, orders.labels) == ("enabled", "", {})
    assert (orders.min_decryption_version, orders.min_available_version) == (1, 1)
    assert (orders.deletion_allowed, orders.pending_deletion_at) == (True, None)
    first, second = made["orders"]
    assert service.decrypt("orders", first).plaintext == b"under version 1"
    assert service.decrypt("orders", second).plaintext == b"under version 2"
    signature = bytes.fromhex(made["releases"])
    assert service.verify("releases", b"message", signature).valid
    assert service.encrypt("recreated", b"x").version == 1

    # The new behaviour works on the upgraded keys.
    service.update_key("orders", min_decryption_version=2, labels={"team": "payments"})
    with pytest.raises(FencedCiphertext):
        service.decrypt("orders", first)
    assert service.decrypt("orders", second).plaintext == b"under version 2"
    service.disable_key("releases")
    with pytest.raises(KeyDisabled):
        service.verify("releases", b"message", signature)
    service.enable_key("releases")
    assert service.verify("releases", b"message", signature).valid
    service.delete_key("recreated", pending_days=1)
    with pytest.raises(KeyPendingDeletion):
        service.encrypt("recreated", b"x")
    assert check_database(old_settings).failures == []
