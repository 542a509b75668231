"""Master key lifecycle from settings: ``kms init``, ``kms upgrade``, ``kms check`` and the startup
that opens the keystore.

Each runs in one process before any worker exists (the CLI, or gunicorn's master), and each
disposes of its database connections before returning, so nothing is shared across a fork.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from kms.errors import InvalidKDFParameters, NotInitialised, UpgradeNeeded
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import PassphraseKeyring, zeroise
from kms.service.keys import IntegrityReport, KMSService
from kms.service.keystore import (
    OpenedKeystore,
    ensure_not_initialised,
    initialise_keystore,
    new_init_marker,
    open_keystore,
)
from kms.service.passphrase import obtain_passphrase
from kms.settings import Settings
from kms.store.db import create_kms_engine, use_write_ahead_log
from kms.store.repository import SQLKeyRepository
from kms.store.schema import current_revision, head_revision, upgrade_to_head


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
            initialise_keystore(
                SQLKeyRepository(engine),
                passphrase,
                settings.kdf_iterations,
                min_iterations=settings.kdf_floor,
            )
        finally:
            engine.dispose()
    finally:
        zeroise(passphrase)


def open_master_keyring(settings: Settings) -> PassphraseKeyring:
    """Read the passphrase, derive the master key once and prove it on the init marker.

    Refuses (``UpgradeNeeded``) a database made by an earlier release until ``kms upgrade`` ran.
    """
    with _engine(settings) as engine:
        repository = SQLKeyRepository(engine)
        repository.read_keystore()  # "run kms init" comes before asking for a passphrase
        _require_current_schema(settings, engine)
        return _open(settings, repository).keyring


@dataclass(frozen=True)
class UpgradeResult:
    sealed_keys: int
    sealed_versions: int
    already_current: bool


def upgrade_database(settings: Settings) -> UpgradeResult:
    """``kms upgrade``: migrate the schema, then (once) compute the MAC of every existing row.

    Run with every kms node stopped. The MACs need the master key, so the passphrase is read
    after the migration. Rows are sealed only if they are consistent (see
    ``KMSService.seal_rows``); otherwise ``IntegrityFailure`` names the row and no MAC is
    written.
    """
    with _engine(settings) as engine:
        repository = SQLKeyRepository(engine)
        repository.read_keystore()
        upgrade_to_head(engine)
        opened = _open(settings, repository, allow_unsealed=True)
        try:
            if opened.sealed:
                return UpgradeResult(0, 0, already_current=True)
            service = KMSService(repository, opened.keyring, KeyMaterialCache(0))
            keys, versions = service.seal_rows(new_init_marker(opened.keyring))
            return UpgradeResult(keys, versions, already_current=False)
        finally:
            opened.keyring.close()


def check_database(settings: Settings) -> IntegrityReport:
    """``kms check``: verify every key row and version row; the report names each failure."""
    with _engine(settings) as engine:
        repository = SQLKeyRepository(engine)
        repository.read_keystore()
        _require_current_schema(settings, engine)
        keyring = _open(settings, repository).keyring
        try:
            return KMSService(repository, keyring, KeyMaterialCache(0)).check_integrity()
        finally:
            keyring.close()


def describe_database(settings: Settings) -> str:
    """The database for messages: its file, or its URL without the password."""
    path = _sqlite_file(settings)
    if path is not None:
        return str(path)
    return make_url(settings.database_url).render_as_string(hide_password=True)


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    if _sqlite_file_is_empty(settings):
        # Connecting would create the file, or write a WAL header into an empty one.
        raise NotInitialised()
    engine = create_kms_engine(settings.database_url, pool=False)
    try:
        yield engine
    finally:
        engine.dispose()


def _require_current_schema(settings: Settings, engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise UpgradeNeeded(
            f"the database {describe_database(settings)} has schema revision {current}, this kms "
            f"needs {head}: stop kms and run `kms upgrade`"
        )


def _open(
    settings: Settings, repository: SQLKeyRepository, *, allow_unsealed: bool = False
) -> OpenedKeystore:
    try:
        return open_keystore(
            repository,
            obtain_passphrase(settings.master_passphrase_file),
            min_iterations=settings.kdf_floor,
            allow_unsealed=allow_unsealed,
        )
    except UpgradeNeeded:
        raise UpgradeNeeded(
            f"the rows of {describe_database(settings)} carry no MACs yet: stop kms and run "
            "`kms upgrade`"
        ) from None
    except InvalidKDFParameters as error:
        raise InvalidKDFParameters(
            f"{error.public_message} (kms_metadata in {describe_database(settings)})"
        ) from None


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
