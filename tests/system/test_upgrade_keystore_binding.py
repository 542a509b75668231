"""A keystore of the previous release (schema 0004, format-1 MACs, no keystore id) upgrades in
place, and ``kms upgrade`` never launders: it verifies every MAC before it writes any, and an
older init marker put back is an integrity alarm, not an upgrade prompt.

The old keystore is made by the previous release's own code, taken from git history and run in
a child process. On SQLite and, given --postgres-dsn, on PostgreSQL.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kms.errors import IntegrityFailure, KeystoreTampered, UpgradeNeeded
from kms.master import check_database, open_master_keyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.schema import head_revision
from kms.upgrade import upgrade_database
from tests.helpers.keystore import TEST_ITERATIONS
from tests.helpers.old_release import extract_release, run_in_release
from tests.system.test_upgrade import (
    make_old_database,
    old_settings,  # noqa: F401 - a fixture
    previous_release,  # noqa: F401 - a fixture
    revision,
    sql,
)

#: main before keystore binding: schema 0004, format-1 row MACs, init marker v2.
UNBOUND_RELEASE = "194bf3ab9b4705589ec26567a36524791a150e9d"

UNBOUND_RELEASE_SCRIPT = textwrap.dedent(
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
    service = KMSService.from_settings(settings, repository, keyring, cache=KeyMaterialCache(16))
    made = {}
    service.create_key("orders")
    made["v1"] = service.encrypt("orders", b"under version 1").ciphertext
    service.rotate_key("orders")
    made["v2"] = service.encrypt("orders", b"under version 2").ciphertext
    service.create_key("signer", "sign", "Ed25519")
    made["signature"] = service.sign("signer", b"message").signature.hex()
    service.create_key("paused")
    service.disable_key("paused")
    repository.close()
    keyring.close()
    print(json.dumps(made))
    """
)
KEYS, VERSIONS = 3, 4


@pytest.fixture(scope="module")
def unbound_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_release(UNBOUND_RELEASE, tmp_path_factory.mktemp("unbound-release"))


@pytest.fixture
def new_service(old_settings: Settings, open_service: Any) -> Callable[[], KMSService]:  # noqa: F811 - the fixture
    """A service on the upgraded database (``old_settings``), closed after the test."""
    return lambda: open_service(old_settings)


def rows(settings: Settings, statement: str) -> list[tuple[Any, ...]]:
    engine = create_kms_engine(settings.database_url, pool=False)
    try:
        with engine.connect() as conn:
            from sqlalchemy import text

            return [tuple(row) for row in conn.execute(text(statement))]
    finally:
        engine.dispose()


def metadata(settings: Settings, name: str) -> bytes | None:
    found = rows(settings, f"SELECT value FROM kms_metadata WHERE name = '{name}'")  # noqa: S608
    return bytes(found[0][0]) if found else None


def test_the_previous_release_upgrades_in_place_and_its_keys_keep_working(
    unbound_release: Path,
    old_settings: Settings,  # noqa: F811 - the fixture
    new_service: Any,
) -> None:
    made = run_in_release(unbound_release, UNBOUND_RELEASE_SCRIPT, old_settings, TEST_ITERATIONS)
    assert revision(old_settings) == "0004"
    assert metadata(old_settings, "keystore_id") is None
    with pytest.raises(UpgradeNeeded, match="kms upgrade"):
        open_master_keyring(old_settings)

    result = upgrade_database(old_settings)
    assert result.migrated == ("0004", head_revision())
    assert (result.sealed_keys, result.sealed_versions) == (KEYS, VERSIONS)
    assert upgrade_database(old_settings).already_current
    assert len(metadata(old_settings, "keystore_id") or b"") == 16
    report = check_database(old_settings)
    assert (report.keys, report.versions, report.failures, report.epoch) == (KEYS, VERSIONS, [], 1)

    service = new_service()
    assert service.decrypt("orders", made["v1"]).plaintext == b"under version 1"
    assert service.decrypt("orders", made["v2"]).plaintext == b"under version 2"
    assert service.verify("signer", b"message", bytes.fromhex(made["signature"])).valid
    assert service.get_key("paused").state == "disabled"
    assert service.rotate_key("orders").version == 3
    # A new wrap is format 4 (bound to the keystore id, under the HKDF wrapping key); the old
    # ones still unwrap.
    formats = rows(
        old_settings,
        "SELECT version, wrapped_key FROM key_versions WHERE key_id = 'orders' ORDER BY version",
    )
    assert [bytes(blob)[:1] for _, blob in formats] == [b"\x02", b"\x02", b"\x04"]
    assert check_database(old_settings).epoch == 2


def test_a_format_1_row_put_back_after_the_upgrade_is_refused(
    unbound_release: Path,
    old_settings: Settings,  # noqa: F811 - the fixture
    new_service: Any,
) -> None:
    """The downgrade: a genuine row of before the upgrade carries no generation, and its MAC
    is bound to no keystore: only ``kms upgrade`` reads that format."""
    run_in_release(unbound_release, UNBOUND_RELEASE_SCRIPT, old_settings, TEST_ITERATIONS)
    (old_row,) = rows(old_settings, "SELECT state, mac FROM keys WHERE key_id = 'paused'")
    upgrade_database(old_settings)
    sql(
        old_settings,
        "UPDATE keys SET state = 'enabled', mac = :mac WHERE key_id = 'paused'",
        mac=old_row[1],
    )
    with pytest.raises(IntegrityFailure):
        new_service().encrypt("paused", b"x")
    assert check_database(old_settings).failures == ["key 'paused': key row: MAC does not match"]


def test_the_previous_marker_put_back_is_an_alarm_not_an_upgrade(
    unbound_release: Path,
    old_settings: Settings,  # noqa: F811 - the fixture
) -> None:
    run_in_release(unbound_release, UNBOUND_RELEASE_SCRIPT, old_settings, TEST_ITERATIONS)
    old_marker = metadata(old_settings, "init_marker")
    old_kdf_parameters = metadata(old_settings, "kdf_parameters")
    upgrade_database(old_settings)
    sql(old_settings, "UPDATE keys SET state = 'enabled' WHERE key_id = 'paused'")  # the goal
    sql(old_settings, "UPDATE kms_metadata SET value = :v WHERE name = 'init_marker'", v=old_marker)
    macs = rows(old_settings, "SELECT key_id, mac FROM keys ORDER BY key_id")
    with pytest.raises(KeystoreTampered, match="older marker was put back"):
        open_master_keyring(old_settings)
    with pytest.raises(KeystoreTampered, match="older marker was put back"):
        upgrade_database(old_settings)
    # Without the keystore id and epoch rows, the sealed root secret gives it away.
    sql(old_settings, "DELETE FROM kms_metadata WHERE name IN ('keystore_id', 'epoch')")
    with pytest.raises(KeystoreTampered, match="older rows were put back"):
        upgrade_database(old_settings)
    # And without it too (the old KDF parameters put back), the format-2 MACs still do.
    sql(old_settings, "DELETE FROM kms_metadata WHERE name = 'root_secret'")
    sql(
        old_settings,
        "UPDATE kms_metadata SET value = :v WHERE name = 'kdf_parameters'",
        v=old_kdf_parameters,
    )
    with pytest.raises(IntegrityFailure) as excinfo:
        upgrade_database(old_settings)
    assert "MAC does not match" in excinfo.value.detail
    assert rows(old_settings, "SELECT key_id, mac FROM keys ORDER BY key_id") == macs


def test_a_row_tampered_before_the_upgrade_is_named_and_nothing_is_written(
    unbound_release: Path,
    old_settings: Settings,  # noqa: F811 - the fixture
) -> None:
    run_in_release(unbound_release, UNBOUND_RELEASE_SCRIPT, old_settings, TEST_ITERATIONS)
    sql(old_settings, "UPDATE keys SET state = 'enabled' WHERE key_id = 'paused'")
    macs = rows(old_settings, "SELECT key_id, mac FROM keys ORDER BY key_id")
    with pytest.raises(IntegrityFailure) as excinfo:
        upgrade_database(old_settings)
    assert excinfo.value.detail == (
        "key 'paused': key row: MAC does not match; nothing was written"
    )
    assert rows(old_settings, "SELECT key_id, mac FROM keys ORDER BY key_id") == macs
    assert metadata(old_settings, "keystore_id") is None
    with pytest.raises(UpgradeNeeded):
        open_master_keyring(old_settings)


def test_the_pre_mac_marker_put_back_on_a_sealed_keystore_is_an_alarm(
    previous_release: Path,  # noqa: F811 - the fixture
    old_settings: Settings,  # noqa: F811 - the fixture
) -> None:
    """A keystore born before row MACs (0.1.0) keeps its first marker in old backups: put back
    on the upgraded keystore, it must not make ``kms upgrade`` seal the rows as they stand."""
    make_old_database(previous_release, old_settings, TEST_ITERATIONS)
    first_marker = metadata(old_settings, "init_marker")
    upgrade_database(old_settings)
    sql(old_settings, "UPDATE keys SET latest_version = 1 WHERE key_id = 'enc-AES-256-GCM'")
    sql(
        old_settings,
        "UPDATE kms_metadata SET value = :v WHERE name = 'init_marker'",
        v=first_marker,
    )
    with pytest.raises(KeystoreTampered):
        upgrade_database(old_settings)
    sql(old_settings, "DELETE FROM kms_metadata WHERE name IN ('keystore_id', 'epoch')")
    with pytest.raises(KeystoreTampered, match="older rows were put back"):
        upgrade_database(old_settings)
    with pytest.raises(KeystoreTampered, match="older rows were put back"):
        open_master_keyring(old_settings)
