"""Shared fixtures: a real SQLite file in a tmp dir, a passphrase file, an initialised keystore.

Tests derive the master key with few PBKDF2 iterations (through the Settings object they build);
production and every config file use at least 600,000.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kms.master import init_database, open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import PassphraseKeyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository

TEST_ITERATIONS = 1_000
TEST_PASSPHRASE = b"correct horse battery staple"


def write_passphrase_file(path: Path, passphrase: bytes, mode: int = 0o400) -> Path:
    path.write_bytes(passphrase + b"\n")
    os.chmod(path, mode)
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_dsn=str(tmp_path / "kms.db"),
        master_passphrase_file=write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE),
        kdf_iterations=TEST_ITERATIONS,
    )


@pytest.fixture
def initialised(settings: Settings) -> Settings:
    init_database(settings)
    return settings


@pytest.fixture
def keyring(initialised: Settings) -> Iterator[PassphraseKeyring]:
    keyring = open_master_keyring(initialised)
    yield keyring
    keyring.close()


@pytest.fixture
def repository(initialised: Settings) -> Iterator[SQLKeyRepository]:
    repository = SQLKeyRepository(create_kms_engine(initialised.database_url))
    yield repository
    repository.close()


@pytest.fixture
def service(repository: SQLKeyRepository, keyring: PassphraseKeyring) -> KMSService:
    return KMSService(repository, keyring, KeyMaterialCache(1024))
