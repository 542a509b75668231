"""A new master passphrase has at least 16 bytes (docs/security.md, docs/operations.md).

``kms init``, ``kms rekey`` (its new passphrase) and ``kms restore --as-clone`` (the clone's)
refuse a shorter one with one line, exit 1, and change nothing, unless the operator passes
``--allow-short-passphrase``; a passphrase of exactly 16 bytes (one trailing newline not
counted) is accepted. A keystore made with a short passphrase still opens: the floor is for new
master keys only. The dev passphrase ``make run`` creates clears the floor by far.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kms.devcerts import write_dev_certificates
from kms.master import init_database, open_master_keyring
from kms.service.passphrase import MIN_PASSPHRASE_BYTES, read_passphrase_file
from kms.settings import Settings
from tests.helpers.config import write_config
from tests.helpers.harness import database_rows, run_kms
from tests.helpers.keystore import TEST_ITERATIONS, TEST_PASSPHRASE, write_passphrase_file

pytestmark = pytest.mark.slow

SHORT = b"x" * (MIN_PASSPHRASE_BYTES - 1)
JUST_LONG_ENOUGH = b"y" * MIN_PASSPHRASE_BYTES
REFUSED = (
    "kms: {what} is shorter than 16 bytes: choose a longer one (e.g. `openssl rand -base64 32`), "
    "or pass --allow-short-passphrase for a throwaway keystore"
)


def cheap_settings(directory: Path, passphrase: bytes) -> Settings:
    """A keystore's settings in process, at the tests' low PBKDF2 cost."""
    return Settings(
        database_dsn=str(directory / "kms.db"),
        master_passphrase_file=write_passphrase_file(directory / "master.key", passphrase),
        kdf_iterations=TEST_ITERATIONS,
        insecure_test_kdf_floor=TEST_ITERATIONS,
    )


def config_for(directory: Path, passphrase: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write_config(
        directory / "config.yaml",
        passphrase_file=write_passphrase_file(directory / "master.key", passphrase),
        dsn=directory / "kms.db",
    )


def test_init_refuses_a_short_passphrase_unless_allowed(tmp_path: Path) -> None:
    assert MIN_PASSPHRASE_BYTES == 16
    short = config_for(tmp_path / "short", SHORT)
    refused = run_kms("init", config=short)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.splitlines() == [REFUSED.format(what="the passphrase")]
    assert SHORT.decode() not in refused.stderr
    # No database, nothing beside it.
    assert sorted(path.name for path in (tmp_path / "short").iterdir()) == [
        "config.yaml",
        "master.key",
    ]

    allowed = run_kms("init", "--allow-short-passphrase", config=short)
    assert allowed.returncode == 0, allowed.stderr
    assert database_rows(tmp_path / "short" / "kms.db")["kms_metadata"]

    # Exactly 16 bytes (and the newline a file ends with) is enough.
    (tmp_path / "enough").mkdir()
    init_database(cheap_settings(tmp_path / "enough", JUST_LONG_ENOUGH))


def test_rekey_and_a_clone_refuse_a_short_new_passphrase(tmp_path: Path) -> None:
    config = config_for(tmp_path, TEST_PASSPHRASE)
    # At the production cost: the allowed rekey below runs from a config file, whose floor no
    # setting lowers.
    init_database(
        Settings(
            database_dsn=str(tmp_path / "kms.db"), master_passphrase_file=tmp_path / "master.key"
        )
    )
    before = database_rows(tmp_path / "kms.db")
    short = write_passphrase_file(tmp_path / "short.key", SHORT)

    refused = run_kms("rekey", "--new-passphrase-file", str(short), config=config)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.splitlines() == [REFUSED.format(what="the new passphrase")]
    assert database_rows(tmp_path / "kms.db") == before  # the old passphrase still opens it

    # The clone's passphrase is refused before the backup is read.
    backup = tmp_path / "kms.backup"
    backup.write_bytes(b"never read")
    clone = config_for(tmp_path / "clone", TEST_PASSPHRASE)
    cloned = run_kms(
        "restore", str(backup), "--as-clone", "--new-passphrase-file", str(short), config=clone
    )
    assert (cloned.returncode, cloned.stdout) == (1, "")
    assert cloned.stderr.splitlines() == [REFUSED.format(what="the new passphrase")]
    assert not (tmp_path / "clone" / "kms.db").exists()
    misplaced = run_kms("restore", str(backup), "--allow-short-passphrase", config=clone)
    assert misplaced.returncode == 1
    assert misplaced.stderr.splitlines() == [
        "kms: --new-passphrase-file and --allow-short-passphrase need --as-clone"
    ]

    allowed = run_kms(
        "rekey", "--new-passphrase-file", str(short), "--allow-short-passphrase", config=config
    )
    assert allowed.returncode == 0, allowed.stderr
    # A keystore whose passphrase is short still opens: the floor is for new master keys.
    opened = open_master_keyring(
        Settings(database_dsn=str(tmp_path / "kms.db"), master_passphrase_file=short)
    )
    opened.close()


def test_the_dev_passphrase_is_long_enough(tmp_path: Path) -> None:
    write_dev_certificates(tmp_path / "secrets")
    dev_passphrase = tmp_path / "secrets" / "master.key"
    assert len(read_passphrase_file(dev_passphrase)) >= 2 * MIN_PASSPHRASE_BYTES
    init_database(
        Settings(
            database_dsn=str(tmp_path / "kms.db"),
            master_passphrase_file=dev_passphrase,
            kdf_iterations=TEST_ITERATIONS,
            insecure_test_kdf_floor=TEST_ITERATIONS,
        )
    )
