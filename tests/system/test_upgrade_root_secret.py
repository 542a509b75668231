"""A keystore of the release before root secrets (keystore format 3: the passphrase-derived key
used directly to wrap, wrap format 3) upgrades in place to format 4: ``kms upgrade`` seals that
key as the root secret, every earlier wrap and MAC stays valid, new wraps use the HKDF-derived
wrapping key (format 4), and ``kms rekey`` re-wraps everything in format 4.

The old keystore is made by that release's own code, taken from git history and run in a child
process (tests/helpers/old_release.py). On SQLite and, given --postgres-dsn, on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kms.errors import UpgradeNeeded, WrongPassphrase
from kms.master import check_database, open_master_keyring
from kms.rekey import rekey_database
from kms.settings import Settings
from kms.store.schema import head_revision
from kms.upgrade import upgrade_database
from tests.helpers.keystore import TEST_ITERATIONS, write_passphrase_file
from tests.helpers.old_release import extract_release, run_in_release
from tests.system.test_upgrade import old_settings  # noqa: F401 - a fixture
from tests.system.test_upgrade_keystore_binding import (
    KEYS,
    UNBOUND_RELEASE_SCRIPT,
    VERSIONS,
    metadata,
    rows,
)

#: main before root secrets: keystore format 3, wrap format 3, schema 0006.
UNWRAPPED_ROOT_RELEASE = "a0b1200aec944def7157efad14f0dd52f14b4ba7"


@pytest.fixture(scope="module")
def unwrapped_root_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_release(UNWRAPPED_ROOT_RELEASE, tmp_path_factory.mktemp("root-release"))


@pytest.fixture
def new_service(open_service: Any) -> Any:
    return open_service


def wrap_formats(settings: Settings) -> list[int]:
    return sorted(
        bytes(row[0])[0] for row in rows(settings, "SELECT wrapped_key FROM key_versions")
    )


def test_the_previous_release_upgrades_in_place_to_a_sealed_root_secret(
    unwrapped_root_release: Path,
    old_settings: Settings,  # noqa: F811 - the fixture
    new_service: Any,
    tmp_path: Path,
) -> None:
    made = run_in_release(
        unwrapped_root_release, UNBOUND_RELEASE_SCRIPT, old_settings, TEST_ITERATIONS
    )
    assert metadata(old_settings, "root_secret") is None
    assert wrap_formats(old_settings) == [3] * VERSIONS
    keystore_id = metadata(old_settings, "keystore_id")
    kdf_before = metadata(old_settings, "kdf_parameters")
    with pytest.raises(UpgradeNeeded, match="kms upgrade"):
        open_master_keyring(old_settings)

    result = upgrade_database(old_settings)
    assert result.root_sealed and (result.sealed_keys, result.sealed_versions) == (0, 0)
    assert result.migrated == ("0006", head_revision())  # later schemas: migrated too
    assert upgrade_database(old_settings).already_current
    sealed = metadata(old_settings, "root_secret") or b""
    assert sealed[:1] == b"\x01"  # sealed by the passphrase backend
    assert metadata(old_settings, "keystore_id") == keystore_id
    assert metadata(old_settings, "kdf_parameters") != kdf_before  # a new salt for the KEK
    assert wrap_formats(old_settings) == [3] * VERSIONS  # nothing re-wrapped, nothing re-MAC'd
    report = check_database(old_settings)
    assert (report.keys, report.versions, report.failures) == (KEYS, VERSIONS, [])

    service = new_service(old_settings)
    assert service.decrypt("orders", made["v1"]).plaintext == b"under version 1"
    assert service.decrypt("orders", made["v2"]).plaintext == b"under version 2"
    assert service.verify("signer", b"message", bytes.fromhex(made["signature"])).valid
    service.rotate_key("orders")
    v3 = service.encrypt("orders", b"under version 3").ciphertext
    assert wrap_formats(old_settings) == [3] * VERSIONS + [4]  # the new version: format 4

    new_file = write_passphrase_file(tmp_path / "new.key", b"a new passphrase for the rekey")
    rekey_database(old_settings, bytearray(b"a new passphrase for the rekey"))
    assert wrap_formats(old_settings) == [4] * (VERSIONS + 1)
    with pytest.raises(WrongPassphrase):
        open_master_keyring(old_settings)
    rekeyed = old_settings.with_overrides(master_passphrase_file=new_file)
    service = new_service(rekeyed)
    assert service.decrypt("orders", made["v1"]).plaintext == b"under version 1"
    assert service.decrypt("orders", v3).plaintext == b"under version 3"
    assert check_database(rekeyed).failures == []
