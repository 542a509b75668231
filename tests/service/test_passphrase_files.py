"""Passphrase files are read as configured: through ``load_settings`` from a real config file.

A symlink in the configured place is refused (``O_NOFOLLOW`` on the configured, unresolved path),
and so is anything that is not a regular file, at once: a FIFO with no writer must not block
startup.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml

from kms.errors import PassphraseError
from kms.master import init_database, open_master_keyring
from kms.settings import Settings, load_settings
from tests.helpers.keystore import TEST_ITERATIONS, TEST_PASSPHRASE, write_passphrase_file


def settings_from_config(directory: Path, passphrase_file: str | Path) -> Settings:
    config = directory / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kms": {
                    "master_passphrase_file": str(passphrase_file),
                    "kdf_iterations": 600_000,
                },
                "database": {"dsn": str(directory / "kms.db")},
            }
        ),
        encoding="utf-8",
    )
    # Few iterations for the test keystore; the config file itself keeps the production floor.
    return load_settings(config, environ={}).with_overrides(
        kdf_iterations=TEST_ITERATIONS, insecure_test_kdf_floor=TEST_ITERATIONS
    )


@pytest.fixture
def keystore(tmp_path: Path) -> Settings:
    real = write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE)
    settings = settings_from_config(tmp_path, real)
    init_database(settings)
    return settings


def test_the_configured_passphrase_file_opens_the_keystore(
    tmp_path: Path, keystore: Settings
) -> None:
    # The control for the refusals below: the same loader, a regular 0400 file.
    open_master_keyring(settings_from_config(tmp_path, tmp_path / "master.key")).close()


def test_a_symlink_configured_as_the_passphrase_file_is_refused(
    tmp_path: Path, keystore: Settings
) -> None:
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "master.key")
    settings = settings_from_config(tmp_path, link)
    assert settings.master_passphrase_file == link  # kept as configured, not resolved
    with pytest.raises(PassphraseError) as excinfo:
        open_master_keyring(settings)
    assert str(link) in excinfo.value.public_message
    assert "symbolic link" in excinfo.value.public_message


def test_a_relative_symlink_path_is_made_absolute_but_not_resolved(
    tmp_path: Path, keystore: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "link.key").symlink_to(tmp_path / "master.key")
    monkeypatch.chdir(tmp_path)
    settings = settings_from_config(tmp_path, "secrets/link.key")
    assert settings.master_passphrase_file == tmp_path / "secrets" / "link.key"
    with pytest.raises(PassphraseError, match="symbolic link"):
        open_master_keyring(settings)


#: A safety limit, never a measurement: a FIFO opened for reading waits for a writer forever,
#: so a refusal that has not come by then is a hang, however busy the machine.
HANG_LIMIT_SECONDS = 60.0


def refused(settings: Settings, path: Path) -> PassphraseError:
    """Open the keystore in a thread (nothing ever writes to ``path``): it must be refused;
    fail if it blocks instead."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            open_master_keyring(settings).close()
        except BaseException as error:  # handed to the test thread
            outcome.append(error)
        else:
            outcome.append(None)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(HANG_LIMIT_SECONDS)
    if worker.is_alive():
        if path.exists() and not path.is_dir():
            # Unblock the reader (it waits for a writer) so the thread does not outlive the test.
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail(f"opening {path} blocked (still waiting after {HANG_LIMIT_SECONDS} s)")
    (error,) = outcome
    assert isinstance(error, PassphraseError), error
    return error


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path, keystore: Settings) -> None:
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    error = refused(settings_from_config(tmp_path, fifo), fifo)
    assert str(fifo) in error.public_message
    assert "FIFO" in error.public_message


def test_a_directory_is_refused(tmp_path: Path, keystore: Settings) -> None:
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    error = refused(settings_from_config(tmp_path, directory), directory)
    assert "directory" in error.public_message


def test_a_character_device_is_refused(tmp_path: Path, keystore: Settings) -> None:
    # /dev/zero would be read forever, /dev/null reads as empty: neither is a passphrase.
    error = refused(settings_from_config(tmp_path, "/dev/zero"), Path("/dev/zero"))
    assert "character device" in error.public_message


def test_the_mode_rule_still_holds_through_the_loader(tmp_path: Path, keystore: Settings) -> None:
    os.chmod(tmp_path / "master.key", 0o440)
    with pytest.raises(PassphraseError, match="chmod 0400"):
        open_master_keyring(settings_from_config(tmp_path, tmp_path / "master.key"))
