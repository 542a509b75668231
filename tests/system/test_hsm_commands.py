"""The operator commands on the ``pkcs11`` backend, run as an operator runs them (``kms``
processes, a config file) against a real SoftHSM2 token (tests/helpers/softhsm.py):
``kms init --backend``, ``kms rekey`` (a new root secret, sealed by the HSM's key or by another
key of the token with ``--key-label``), ``kms hsm init --key-label`` and the time ``kms check``
reports for opening the root secret.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from kms.master import open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.config import write_config
from tests.helpers.harness import run_kms
from tests.helpers.keystore import TEST_PASSPHRASE, make_service, write_passphrase_file
from tests.helpers.softhsm import (
    Token,
    session_token,  # noqa: F401 - a fixture
    token,  # noqa: F401 - a fixture
)
from tests.system.test_startup_faults import one_line_failure

pytestmark = pytest.mark.slow


def config_for(directory: Path, token: Token, key_label: str, backend: str = "pkcs11") -> Path:  # noqa: F811
    """A config for the commands: the database ``directory/kms.db``, a passphrase file, and the
    token's key ``key_label``, with ``kms.master_key.backend: backend``."""
    section = token.master_key_section(key_label)
    section["backend"] = backend
    passphrase_file = directory / "master.key"
    if not passphrase_file.exists():
        write_passphrase_file(passphrase_file, TEST_PASSPHRASE)
    return write_config(
        directory / f"{key_label}-{backend}.yaml",
        dsn=directory / "kms.db",
        passphrase_file=passphrase_file,
        kms={"master_key": section},
    )


def metadata(database: Path) -> dict[str, bytes]:
    with closing(sqlite3.connect(database)) as conn:
        return {name: bytes(value) for name, value in conn.execute("SELECT * FROM kms_metadata")}


def wrapped_keys(database: Path) -> list[bytes]:
    with closing(sqlite3.connect(database)) as conn:
        return [bytes(row[0]) for row in conn.execute("SELECT wrapped_key FROM key_versions")]


def encrypt(settings: Settings, plaintexts: dict[str, bytes]) -> dict[str, bytes]:
    """Make the key ``orders`` and encrypt each plaintext, in process."""
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(64))
        service.create_key("orders")
        return {
            name: service.encrypt("orders", text).ciphertext for name, text in plaintexts.items()
        }
    finally:
        repository.close()
        keyring.close()


def decrypt(settings: Settings, ciphertexts: dict[str, bytes]) -> dict[str, bytes]:
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(64))
        return {
            name: service.decrypt("orders", ciphertext).plaintext
            for name, ciphertext in ciphertexts.items()
        }
    finally:
        repository.close()
        keyring.close()


def test_init_with_backend_pkcs11_makes_a_keystore_the_hsm_seals(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    label = f"init-{tmp_path.name}"
    config = config_for(tmp_path, token, label)
    made = run_kms("hsm", "init", config=config)
    assert made.returncode == 0, made.stderr
    initialised = run_kms("init", "--backend", "pkcs11", config=config)
    assert initialised.returncode == 0, initialised.stderr
    rows = metadata(tmp_path / "kms.db")
    assert rows["root_secret"][:1] == b"\x02" and "kdf_parameters" not in rows

    checked = run_kms("check", config=config)
    assert checked.returncode == 0, checked.stderr
    # How long opening the root secret took: the HSM's library, the login and the unseal.
    assert re.fullmatch(
        r"kms: checked 0 keys and 0 key versions in \S+ at epoch \d+, root secret opened by "
        r"the pkcs11 backend in \d+\.\d ms: all authentic\n",
        checked.stdout,
    ), checked.stdout


@pytest.mark.parametrize(("flag", "setting"), [("pkcs11", "passphrase"), ("passphrase", "pkcs11")])
def test_init_with_a_backend_the_settings_do_not_name_is_refused_and_writes_nothing(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
    flag: str,
    setting: str,
) -> None:
    """kms opens the keystore with kms.master_key.backend at every start: a keystore sealed by
    another backend would not open, so the flag must agree with the setting."""
    config = config_for(tmp_path, token, "never-used", backend=setting)
    line = one_line_failure(
        run_kms("init", "--backend", flag, config=config),
        f"kms init --backend {flag}: kms.master_key.backend is {setting} ({config})",
    )
    assert f"set kms.master_key.backend: {flag}" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["master.key", config.name]


def test_rekey_on_the_hsm_makes_a_new_root_secret_sealed_by_its_key_or_another(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    old_label, new_label = f"old-{tmp_path.name}", f"new-{tmp_path.name}"
    database = tmp_path / "kms.db"
    old_config, new_config = (
        config_for(tmp_path, token, old_label),
        config_for(tmp_path, token, new_label),
    )
    for command in (("hsm", "init"), ("init", "--backend", "pkcs11")):
        done = run_kms(*command, config=old_config)
        assert done.returncode == 0, done.stderr
    on_old, on_new = (
        token.settings(database, key_label=old_label),
        token.settings(database, key_label=new_label),
    )
    made = encrypt(on_old, {"first": b"made before the rekeys"})

    # A new passphrase means nothing to the pkcs11 backend: refused, nothing changed.
    before = database.read_bytes()
    new_passphrase = write_passphrase_file(tmp_path / "new.key", b"a new passphrase, unused")
    one_line_failure(
        run_kms("rekey", "--new-passphrase-file", str(new_passphrase), config=old_config),
        "--new-passphrase-file: kms.master_key.backend is pkcs11",
    )
    assert database.read_bytes() == before

    # Plain rekey: a new root secret, every version re-wrapped, sealed by the same HSM key.
    sealed_before, wrapped_before = metadata(database)["root_secret"], wrapped_keys(database)
    rekeyed = run_kms("rekey", config=old_config)
    assert rekeyed.returncode == 0, rekeyed.stderr
    assert rekeyed.stdout == (
        f"kms: rekeyed {database}: 1 key versions of 1 keys re-wrapped; only the HSM key "
        f"{old_label!r} opens it now\n"
    )
    assert metadata(database)["root_secret"] != sealed_before
    assert wrapped_keys(database) != wrapped_before
    assert decrypt(on_old, made) == {"first": b"made before the rekeys"}

    # An absent key is refused before anything is written.
    before = database.read_bytes()
    one_line_failure(
        run_kms("rekey", "--key-label", "never-made", config=old_config),
        "holds no secret key labelled 'never-made'",
    )
    assert database.read_bytes() == before

    # An HSM key rotation: make the new key, rekey onto it; then only it opens the keystore.
    created = run_kms("hsm", "init", "--key-label", new_label, config=old_config)
    assert created.returncode == 0, created.stderr
    assert f"created the key {new_label!r} of token 'kms-test'" in created.stdout
    rotated = run_kms("rekey", "--key-label", new_label, config=old_config)
    assert rotated.returncode == 0, rotated.stderr
    assert f"only the HSM key {new_label!r} opens it now" in rotated.stdout
    assert f"set kms.master_key.key_label: {new_label} before starting kms" in rotated.stdout
    assert decrypt(on_new, made) == {"first": b"made before the rekeys"}
    one_line_failure(
        run_kms("check", config=old_config),
        f"the keystore's root secret does not open with the key {old_label!r}",
    )
    checked = run_kms("check", config=new_config)
    assert checked.returncode == 0, checked.stderr
    assert "root secret opened by the pkcs11 backend in" in checked.stdout
