"""A database of the release before named aliases (schema 0006) upgrades in place to the aliases
table (0007): ``kms upgrade`` adds it, every existing MAC stays valid, every old key is still
reachable by the alias of its key_id, and aliases can then be made for old keys and used.

The old database is made by that release's own code, taken from git history and run in a child
process (tests/helpers/old_release.py). On SQLite and, given --postgres-dsn, on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kms.master import check_database
from kms.settings import Settings
from kms.store.schema import head_revision
from kms.upgrade import upgrade_database
from tests.helpers.keystore import TEST_ITERATIONS
from tests.helpers.old_release import extract_release, run_in_release
from tests.system.test_upgrade import old_settings, revision  # noqa: F401 - a fixture
from tests.system.test_upgrade_keystore_binding import KEYS, UNBOUND_RELEASE_SCRIPT, VERSIONS

#: main before named aliases: schema 0006, keystore format 4.
BEFORE_ALIASES_RELEASE = "63181555a476804edf8730d95f4cebaa406dfe09"


@pytest.fixture(scope="module")
def before_aliases_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_release(BEFORE_ALIASES_RELEASE, tmp_path_factory.mktemp("aliases-release"))


@pytest.fixture
def new_service(open_service: Any) -> Any:
    return open_service


def test_the_previous_release_upgrades_in_place_to_named_aliases(
    before_aliases_release: Path,
    old_settings: Settings,  # noqa: F811 - the fixture
    new_service: Any,
) -> None:
    made = run_in_release(
        before_aliases_release, UNBOUND_RELEASE_SCRIPT, old_settings, TEST_ITERATIONS
    )
    assert revision(old_settings) == "0006"

    result = upgrade_database(old_settings)
    assert result.migrated == ("0006", head_revision())
    assert (result.sealed_keys, result.sealed_versions) == (0, 0)  # no MAC had to change
    assert upgrade_database(old_settings).already_current
    report = check_database(old_settings)
    assert (report.keys, report.versions, report.failures) == (KEYS, VERSIONS, [])

    service = new_service(old_settings)
    assert service.resolve_alias("alias/orders") == "orders"  # the alias of its key_id
    assert service.list_aliases(limit=10, key_id="orders").aliases[0].alias_name == ("alias/orders")
    service.create_alias("alias/shop/orders", "orders")
    key_id = service.resolve_alias("alias/shop/orders")
    assert service.decrypt(key_id, made["v1"]).plaintext == b"under version 1"
    assert service.decrypt(key_id, made["v2"]).plaintext == b"under version 2"
    fresh = service.encrypt(key_id, b"after the upgrade").ciphertext
    assert new_service(old_settings).decrypt("orders", fresh).plaintext == b"after the upgrade"
    assert check_database(old_settings).failures == []
