"""Keystores in process: settings with a cheap KDF, services built as the app builds them, a
keystore reached around kms (``Store``), a repository that counts its reads, and plaintexts.

Tests derive the master key with few PBKDF2 iterations (through the Settings object they build,
``insecure_test_kdf_floor``, which no config file or environment variable can set); production
and every config file use at least 600,000, on write and on read.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from kms.errors import IntegrityFailure
from kms.service.cache import KeyMaterialCache, KeyRowCache
from kms.service.keyring import Keyring, RootKeyring
from kms.service.keys import Generations, KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.records import KeyRecord, KeyRepository, KeyVersionRecord, utc_now
from kms.store.repository import SQLKeyRepository

TEST_ITERATIONS = 1_000
TEST_PASSPHRASE = b"correct horse battery staple"


def write_passphrase_file(path: Path, passphrase: bytes, mode: int = 0o400) -> Path:
    path.write_bytes(passphrase + b"\n")
    os.chmod(path, mode)
    return path


def make_settings(directory: Path, dsn: str | None = None) -> Settings:
    """Test settings for a keystore in ``directory``: kms.db (or the database at ``dsn``) and a
    0400 passphrase file beside it."""
    return Settings(
        database_dsn=str(directory / "kms.db") if dsn is None else dsn,
        master_passphrase_file=write_passphrase_file(directory / "master.key", TEST_PASSPHRASE),
        kdf_iterations=TEST_ITERATIONS,
        insecure_test_kdf_floor=TEST_ITERATIONS,
    )


def make_service(
    repository: KeyRepository,
    keyring: Keyring,
    cache: KeyMaterialCache | None = None,
    *,
    rows: KeyRowCache | None = None,
    generations: Generations | None = None,
    clock: Callable[[], datetime] | None = None,
    after_generation: Callable[[str], None] | None = None,
    **limits: Any,
) -> KMSService:
    """``KMSService.from_settings`` as the app builds it, with ``limits`` (``Settings`` fields:
    ``max_versions=3``, ``deletion_min_pending_days=1``...) instead of the defaults."""
    return KMSService.from_settings(
        Settings(database_dsn="<the repository given>", **limits),
        repository,
        keyring,
        cache=cache,
        rows=rows,
        generations=generations,
        clock=utc_now if clock is None else clock,
        after_generation=after_generation,
    )


#: Plaintexts kms must carry: empty up to 64 KiB.
MAX_TEST_PLAINTEXT = 64 * 1024


@st.composite
def plaintexts(draw: st.DrawFn) -> bytes:
    """Byte strings from 0 bytes to 64 KiB.

    Short ones come from hypothesis byte by byte (so it can shrink them); long ones from a seeded
    PRNG, because drawing 64 KiB one byte at a time overruns hypothesis's example buffer.
    """
    size = draw(st.integers(min_value=0, max_value=MAX_TEST_PLAINTEXT))
    if size <= 256:
        return draw(st.binary(min_size=size, max_size=size))
    return random.Random(draw(st.integers(min_value=0, max_value=2**32 - 1))).randbytes(size)


@dataclass
class Store:
    """One initialised keystore: its settings, services on it, and a way around kms to its SQL."""

    settings: Settings
    keyring: RootKeyring
    engine: Engine
    repositories: list[SQLKeyRepository] = field(default_factory=list)

    def service(self, cache_size: int = 1024, **options: Any) -> KMSService:
        """A service with its own engine and an empty cache: another worker, another node.
        ``options`` are ``make_service``'s (``clock=``, ``after_generation=``, limits)."""
        repository = SQLKeyRepository(create_kms_engine(self.settings.database_url))
        self.repositories.append(repository)
        return make_service(repository, self.keyring, KeyMaterialCache(cache_size), **options)

    def sql(self, statement: str, **params: Any) -> int:
        """Run one statement behind kms's back; return the number of rows it changed."""
        with self.engine.begin() as conn:
            return conn.execute(text(statement), params).rowcount

    def row(self, statement: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(statement), params).one()

    def rows(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(statement), params)]

    def close(self) -> None:
        for repository in self.repositories:
            repository.close()
        self.engine.dispose()
        self.keyring.close()


def assert_refused(
    call: Callable[[], object], key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The call raises IntegrityFailure and the operator's log names the key."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="kms.integrity"), pytest.raises(IntegrityFailure):
        call()
    assert any(f"key {key_id!r}" in record.getMessage() for record in caplog.records), caplog.text


class CountingRepository(SQLKeyRepository):
    """The real repository, counting the key rows and the versions it reads (each version a
    verify tries, each a batch loads)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.keys_read = 0
        self.versions_read: list[int] = []

    def get_key(self, key_id: str) -> KeyRecord:
        self.keys_read += 1
        return super().get_key(key_id)

    def get_version(self, key_id: str, version: int) -> KeyVersionRecord:
        self.versions_read.append(version)
        return super().get_version(key_id, version)

    def get_key_and_latest_version(self, key_id: str) -> tuple[KeyRecord, KeyVersionRecord | None]:
        """A key row and its latest version in one statement: both count as read."""
        self.keys_read += 1
        key, latest = super().get_key_and_latest_version(key_id)
        if latest is not None:
            self.versions_read.append(latest.version)
        return key, latest

    def reset(self) -> None:
        self.keys_read = 0
        self.versions_read = []
