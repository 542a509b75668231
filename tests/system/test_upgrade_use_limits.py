"""A database of the release before rotation by use and time (schema 0002, rows MAC'd) upgrades in
place with ``kms upgrade``: every existing MAC still verifies (the new key fields are NULL, their
default, so they are left out of the encoding), every key keeps working, and the new settings
then apply to the old keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from kms.master import check_database
from kms.settings import Settings
from kms.store.schema import head_revision
from kms.upgrade import upgrade_database
from tests.helpers.keystore import TEST_ITERATIONS, make_service
from tests.helpers.old_release import extract_release, run_in_release
from tests.system.test_upgrade import (
    OLD_KEYS,
    OLD_RELEASE_SCRIPT,
    OLD_VERSIONS,
    old_settings,  # noqa: F401 - a fixture
    revision,
)

# The row-MAC release's Settings takes the test KDF floor as a field of its own.
ROW_MAC_RELEASE_SCRIPT = OLD_RELEASE_SCRIPT.replace(
    "kdf_iterations=int(iterations),",
    "kdf_iterations=int(iterations), insecure_test_kdf_floor=int(iterations),",
)
assert ROW_MAC_RELEASE_SCRIPT != OLD_RELEASE_SCRIPT


#: main when rotation by use and time began: schema revision 0002, rows MAC'd.
ROW_MAC_RELEASE = "47656ff"


def make_row_mac_database(release: Path, settings: Settings) -> dict[str, list[str]]:
    return run_in_release(release, ROW_MAC_RELEASE_SCRIPT, settings, TEST_ITERATIONS)


@pytest.fixture(scope="module")
def row_mac_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_release(ROW_MAC_RELEASE, tmp_path_factory.mktemp("row-mac-release"))


def test_a_row_mac_database_upgrades_in_place_and_keeps_every_mac(
    row_mac_release: Path,
    old_settings: Settings,  # noqa: F811 - the fixture
) -> None:
    from kms.master import open_master_keyring
    from kms.service.cache import KeyMaterialCache
    from kms.store.db import create_kms_engine
    from kms.store.repository import SQLKeyRepository

    made = make_row_mac_database(row_mac_release, old_settings)
    assert revision(old_settings) == "0002"
    result = upgrade_database(old_settings)
    # Migrated through 0003 (key states), 0004 and on to the head; every format-1 MAC verified, then
    # bound to the new keystore id.
    assert result.migrated == ("0002", head_revision())
    assert (result.sealed_keys, result.sealed_versions, result.already_current) == (
        OLD_KEYS,
        OLD_VERSIONS,
        False,
    )
    assert upgrade_database(old_settings).already_current  # a second run changes nothing
    assert revision(old_settings) == head_revision()
    report = check_database(old_settings)
    assert (report.keys, report.versions, report.failures) == (OLD_KEYS, OLD_VERSIONS, [])

    keyring = open_master_keyring(old_settings)
    repository = SQLKeyRepository(create_kms_engine(old_settings.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(0))
        first, second = made["enc-AES-256-GCM"]
        assert service.decrypt("enc-AES-256-GCM", first).plaintext == b"under version 1"
        assert service.decrypt("enc-AES-256-GCM", second).plaintext == b"under version 2"
        updated = service.update_key(
            "enc-AES-256-GCM", rotation_period="12h", max_encryptions_per_version=2
        )
        assert (updated.rotation_period, updated.max_encryptions_per_version) == ("12h", 2)
        versions = [service.encrypt("enc-AES-256-GCM", b"x").version for _ in range(3)]
        assert versions == [2, 2, 3]  # version 2 had none counted before the upgrade
    finally:
        repository.close()
        keyring.close()
    assert check_database(old_settings).failures == []
