"""Master key lifecycle from settings: ``kms init`` and the startup that opens the keystore.

Both run in one process before any worker exists (the CLI, or gunicorn's master), and both
dispose of their database connections before returning, so nothing is shared across a fork.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

from kms.errors import NotInitialised
from kms.service.keyring import PassphraseKeyring, zeroise
from kms.service.keystore import ensure_not_initialised, initialise_keystore, open_keystore
from kms.service.passphrase import obtain_passphrase
from kms.settings import Settings
from kms.store.db import create_kms_engine, use_write_ahead_log
from kms.store.repository import SQLKeyRepository
from kms.store.schema import upgrade_to_head


def init_database(settings: Settings) -> None:
    """Create the schema, the salt, the KDF parameters and the init marker.

    Refuses (``AlreadyInitialised``) and changes nothing when the database already holds a
    keystore. The passphrase is read only after that check, and a refused passphrase leaves no
    database file behind.
    """
    if not _sqlite_file_is_empty(settings):
        # Connecting to a missing SQLite file would create it, so only an existing one is asked.
        engine = create_kms_engine(settings.database_url, pool=False)
        try:
            ensure_not_initialised(SQLKeyRepository(engine))
        finally:
            engine.dispose()
    passphrase = obtain_passphrase(settings.master_passphrase_file)
    try:
        _create_private_sqlite_file(settings)
        engine = create_kms_engine(settings.database_url, pool=False)
        try:
            use_write_ahead_log(engine)
            upgrade_to_head(engine)
            initialise_keystore(SQLKeyRepository(engine), passphrase, settings.kdf_iterations)
        finally:
            engine.dispose()
    finally:
        zeroise(passphrase)


def open_master_keyring(settings: Settings) -> PassphraseKeyring:
    """Read the passphrase, derive the master key once and prove it on the init marker."""
    if _sqlite_file_is_empty(settings):
        # Connecting would create the file, or write a WAL header into an empty one.
        raise NotInitialised()
    engine = create_kms_engine(settings.database_url, pool=False)
    try:
        repository = SQLKeyRepository(engine)
        repository.read_keystore()  # "run kms init" comes before asking for a passphrase
        return open_keystore(repository, obtain_passphrase(settings.master_passphrase_file))
    finally:
        engine.dispose()


def _sqlite_file(settings: Settings) -> Path | None:
    """The database file for any SQLite URL (``sqlite:///``, ``sqlite+pysqlite:///``...)."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _sqlite_file_is_empty(settings: Settings) -> bool:
    """True for a SQLite database that is missing or zero bytes long: it holds no keystore."""
    path = _sqlite_file(settings)
    return path is not None and (not path.is_file() or path.stat().st_size == 0)


def _create_private_sqlite_file(settings: Settings) -> None:
    """Create the database directory and an empty file readable by its owner only.

    SQLite gives the -wal and -shm files the database file's mode, so they stay private too.
    """
    path = _sqlite_file(settings)
    if path is not None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
