"""A database made by the previous release (schema 0001, no row MACs) upgrades in place.

The old database is made by the previous release's own code, taken from git history
(``PREVIOUS_RELEASE``) and run in a child process: its keys, rotations, a recreate, ciphertexts
and signatures. Then this release's ``kms upgrade`` (``upgrade_database``) migrates the schema and
computes every row's MAC, and every key must keep working. Runs on SQLite and, given
--postgres-dsn, on PostgreSQL.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import text

from kms.crypto.algorithms import public_key_der
from kms.crypto.kdf import MIN_ITERATIONS
from kms.errors import IntegrityFailure, InvalidCiphertext, UpgradeNeeded
from kms.master import check_database, open_master_keyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.schema import current_revision, head_revision
from kms.upgrade import upgrade_database
from tests.helpers.config import write_config
from tests.helpers.harness import run_kms
from tests.helpers.keystore import (
    TEST_ITERATIONS,
    TEST_PASSPHRASE,
    write_passphrase_file,
)
from tests.helpers.old_release import extract_release, run_in_release

#: The last commit before row MACs: kms 0.1.0, schema revision 0001.
PREVIOUS_RELEASE = "74109ac39334ee28566259d217833f349af76c52"

# Run with the previous release first on sys.path: make a keystore and use it like a deployment.
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
    )
    init_database(settings)
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    service = KMSService(repository, keyring, KeyMaterialCache(16))
    made = {}
    for algorithm in ["AES-256-GCM", "ChaCha20-Poly1305"]:
        key_id = "enc-" + algorithm
        service.create_key(key_id, "encrypt", algorithm)
        first = service.encrypt(key_id, b"under version 1").ciphertext
        service.rotate_key(key_id)
        second = service.encrypt(key_id, b"under version 2").ciphertext
        made[key_id] = [first, second]
    for algorithm in ["ECDSA-P256", "Ed25519", "RSA-2048"]:
        key_id = "sig-" + algorithm
        service.create_key(key_id, "sign", algorithm)
        first = service.sign(key_id, b"message").signature.hex()
        service.rotate_key(key_id)
        second = service.sign(key_id, b"message").signature.hex()
        made[key_id] = [first, second]
    service.create_key("recreated")
    before = service.encrypt("recreated", b"before").ciphertext
    service.recreate_key("recreated")
    after = service.encrypt("recreated", b"after").ciphertext
    made["recreated"] = [before, after]
    repository.close()
    keyring.close()
    print(json.dumps(made))
    """
)
OLD_KEYS = 6
OLD_VERSIONS = 2 * 2 + 3 * 2 + 1


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's ``kms`` package (with its migrations), extracted from git."""
    return extract_release(PREVIOUS_RELEASE, tmp_path_factory.mktemp("previous-release"))


def make_old_database(
    previous_release: Path, settings: Settings, iterations: int
) -> dict[str, list[str]]:
    return run_in_release(previous_release, OLD_RELEASE_SCRIPT, settings, iterations)


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


def sql(settings: Settings, statement: str, **params: Any) -> None:
    engine = create_kms_engine(settings.database_url, pool=False)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def revision(settings: Settings) -> str | None:
    engine = create_kms_engine(settings.database_url, pool=False)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


@pytest.fixture
def new_service(old_settings: Settings, open_service: Any) -> Callable[[], KMSService]:
    """A service on the upgraded database (``old_settings``), closed after the test."""
    return lambda: open_service(old_settings)


def test_a_previous_release_database_upgrades_and_every_key_keeps_working(
    previous_release: Path, old_settings: Settings, new_service: Any
) -> None:
    made = make_old_database(previous_release, old_settings, TEST_ITERATIONS)
    assert revision(old_settings) == "0001"

    # This release will not serve it before the upgrade, and says what to do.
    with pytest.raises(UpgradeNeeded) as excinfo:
        open_master_keyring(old_settings)
    assert "kms upgrade" in excinfo.value.public_message

    result = upgrade_database(old_settings)
    assert (result.sealed_keys, result.sealed_versions, result.already_current) == (
        OLD_KEYS,
        OLD_VERSIONS,
        False,
    )
    assert revision(old_settings) == head_revision()
    assert upgrade_database(old_settings).already_current  # a second run changes nothing

    service = new_service()
    for algorithm in ["AES-256-GCM", "ChaCha20-Poly1305"]:
        key_id = f"enc-{algorithm}"
        first, second = made[key_id]
        assert service.decrypt(key_id, first).plaintext == b"under version 1"
        assert service.decrypt(key_id, second).plaintext == b"under version 2"
        assert service.encrypt(key_id, b"new").version == 2
        assert service.rotate_key(key_id).version == 3
        assert service.decrypt(key_id, first).plaintext == b"under version 1"
    for algorithm in ["ECDSA-P256", "Ed25519", "RSA-2048"]:
        key_id = f"sig-{algorithm}"
        first, second = (bytes.fromhex(signature) for signature in made[key_id])
        assert service.verify(key_id, b"message", first).version == 1
        assert service.verify(key_id, b"message", second).version == 2
        signed = service.sign(key_id, b"new")
        assert service.verify(key_id, b"new", signed.signature).version == 2
        assert "BEGIN PUBLIC KEY" in service.public_key(key_id, version=1).public_key
    before, after = made["recreated"]
    with pytest.raises(InvalidCiphertext):
        service.decrypt("recreated", before)
    assert service.decrypt("recreated", after).plaintext == b"after"
    assert service.recreate_key("recreated").version == 1

    report = check_database(old_settings)
    assert report.failures == []
    assert (report.keys, report.versions) == (OLD_KEYS, OLD_VERSIONS + 2)

    # After the upgrade, a row changed behind kms's back is named by kms check and refused.
    sql(old_settings, "UPDATE keys SET latest_version = 1 WHERE key_id = 'enc-AES-256-GCM'")
    assert check_database(old_settings).failures == [
        "key 'enc-AES-256-GCM': key row: MAC does not match"
    ]
    with pytest.raises(IntegrityFailure):
        new_service().encrypt("enc-AES-256-GCM", b"x")


def test_clearing_the_macs_after_the_upgrade_does_not_make_kms_seal_again(
    previous_release: Path, old_settings: Settings
) -> None:
    make_old_database(previous_release, old_settings, TEST_ITERATIONS)
    upgrade_database(old_settings)
    sql(old_settings, "UPDATE keys SET mac = NULL, latest_version = 1")
    # The init marker says the rows were sealed; only the master key could say otherwise.
    assert upgrade_database(old_settings).already_current
    failures = check_database(old_settings).failures
    assert len(failures) == OLD_KEYS
    assert all(failure.endswith("key row: no MAC stored") for failure in failures)


def test_an_old_database_tampered_before_the_upgrade_is_not_sealed(
    previous_release: Path, old_settings: Settings
) -> None:
    make_old_database(previous_release, old_settings, TEST_ITERATIONS)
    attacker = ed25519.Ed25519PrivateKey.generate()
    sql(
        old_settings,
        "UPDATE key_versions SET public_key = :der WHERE key_id = 'sig-Ed25519' AND version = 2",
        der=public_key_der(attacker.public_key()),
    )
    with pytest.raises(IntegrityFailure) as excinfo:
        upgrade_database(old_settings)
    assert excinfo.value.detail == (
        "key 'sig-Ed25519': version 2: the public key is not the private key's; nothing was written"
    )
    # Nothing was sealed: the database still needs an upgrade.
    with pytest.raises(UpgradeNeeded):
        open_master_keyring(old_settings)


# -- the commands, as an operator runs them ---------------------------------------------------


@pytest.mark.slow
def test_kms_upgrade_and_kms_check_from_the_command_line(
    previous_release: Path, tmp_path: Path
) -> None:
    # Production KDF cost: commands read their settings from a config file, which has no way to
    # lower the 600,000-iteration floor.
    settings = Settings(
        database_dsn=str(tmp_path / "kms.db"),
        master_passphrase_file=write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE),
    )
    make_old_database(previous_release, settings, MIN_ITERATIONS)
    config = write_config(
        tmp_path / "config.yaml",
        passphrase_file=settings.master_passphrase_file,
        dsn=settings.database_dsn,
    )

    refused = run_kms("check", config=config)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"kms: the database {settings.database_dsn} has schema revision 0001, this kms needs "
        f"{head_revision()}: stop kms and run `kms upgrade`"
    ]

    upgraded = run_kms("upgrade", config=config)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout == (
        f"kms: upgraded {settings.database_dsn}: MACs written for {OLD_KEYS} keys and "
        f"{OLD_VERSIONS} key versions\n"
    )

    checked = run_kms("check", config=config)
    assert checked.returncode == 0, checked.stderr
    assert re.fullmatch(
        re.escape(
            f"kms: checked {OLD_KEYS} keys and {OLD_VERSIONS} key versions in "
            f"{settings.database_dsn} at epoch 1, root secret opened by the passphrase backend "
        )
        + r"in \d+\.\d ms: all authentic\n",
        checked.stdout,
    ), checked.stdout

    sql(settings, "UPDATE keys SET algorithm = 'ChaCha20-Poly1305' WHERE key_id = 'recreated'")
    failed = run_kms("check", config=config)
    assert failed.returncode == 1
    assert failed.stdout == "kms: FAILED key 'recreated': key row: MAC does not match\n"
    assert re.fullmatch(
        re.escape(
            f"kms: checked {OLD_KEYS} keys and {OLD_VERSIONS - 1} key versions in "
            f"{settings.database_dsn} at epoch 1, root secret opened by the passphrase backend "
        )
        + r"in \d+\.\d ms: 1 failed\n",
        failed.stderr,
    ), failed.stderr
