"""The keystore and the service on a real PostgreSQL server: nothing in kms is SQLite-only.

Skipped unless pytest is given --postgres-dsn (see tests/helpers/postgres.py); `.ci/run` gives it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kms.errors import AlreadyInitialised, KeyExists, NotInitialised, WrongPassphrase
from kms.master import init_database, open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import (
    TEST_ITERATIONS,
    TEST_PASSPHRASE,
    make_service,
    write_passphrase_file,
)

THREADS, THREAD_ROTATIONS = 8, 10
PROCESSES, PROCESS_ROTATIONS = 2, 10


@pytest.fixture
def pg_settings(tmp_path: Path, postgres_url: str) -> Settings:
    return Settings(
        database_dsn=postgres_url,
        master_passphrase_file=write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE),
        kdf_iterations=TEST_ITERATIONS,
        insecure_test_kdf_floor=TEST_ITERATIONS,
    )


@pytest.fixture
def pg_keyring(pg_settings: Settings) -> Iterator[RootKeyring]:
    init_database(pg_settings)
    keyring = open_master_keyring(pg_settings)
    yield keyring
    keyring.close()


@pytest.fixture
def pg_service(pg_settings: Settings, pg_keyring: RootKeyring) -> Iterator[KMSService]:
    repository = SQLKeyRepository(create_kms_engine(pg_settings.database_url))
    yield make_service(repository, pg_keyring, KeyMaterialCache(1024))
    repository.close()


def test_an_empty_database_is_not_initialised(pg_settings: Settings) -> None:
    with pytest.raises(NotInitialised):
        open_master_keyring(pg_settings)


def test_init_refuses_twice_and_a_wrong_passphrase_is_refused(
    tmp_path: Path, pg_settings: Settings, pg_keyring: RootKeyring
) -> None:
    with pytest.raises(AlreadyInitialised):
        init_database(pg_settings)
    wrong = pg_settings.with_overrides(
        master_passphrase_file=write_passphrase_file(tmp_path / "wrong.key", b"not it")
    )
    with pytest.raises(WrongPassphrase):
        open_master_keyring(wrong)


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "ChaCha20-Poly1305"])
def test_encrypt_lifecycle(pg_service: KMSService, algorithm: str) -> None:
    key = pg_service.create_key("pg-enc", "encrypt", algorithm)
    first = pg_service.encrypt(key.key_id, b"under version 1")
    assert pg_service.rotate_key(key.key_id).version == 2
    assert pg_service.decrypt(key.key_id, first.ciphertext).plaintext == b"under version 1"
    assert pg_service.encrypt(key.key_id, b"x").version == 2
    with pytest.raises(KeyExists):
        pg_service.create_key("pg-enc", "encrypt", algorithm)
    assert pg_service.recreate_key(key.key_id).version == 1
    assert [v.version for v in pg_service.get_key(key.key_id).key_versions] == [1]
    pg_service.delete_key(key.key_id)
    assert pg_service.list_keys() == []


@pytest.mark.parametrize("algorithm", ["RSA-2048", "ECDSA-P256", "Ed25519"])
def test_sign_lifecycle(pg_service: KMSService, algorithm: str) -> None:
    key = pg_service.create_key("pg-sign", "sign", algorithm)
    signed = pg_service.sign(key.key_id, b"message")
    pg_service.rotate_key(key.key_id)
    assert pg_service.verify(key.key_id, b"message", signed.signature).version == 1
    assert not pg_service.verify(key.key_id, b"other", signed.signature).valid
    assert "BEGIN PUBLIC KEY" in pg_service.public_key(key.key_id, version=1).public_key


def test_concurrent_creates_of_one_key_id_give_one_key(pg_service: KMSService) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        try:
            pg_service.create_key("contested")
            outcome = "created"
        except KeyExists:
            outcome = "exists"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["exists"] * 7


ROTATE_IN_A_PROCESS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from kms.master import open_master_keyring
    from kms.service.cache import KeyMaterialCache
    from kms.service.keys import KMSService
    from kms.settings import Settings
    from kms.store.db import create_kms_engine
    from kms.store.repository import SQLKeyRepository

    url, passphrase_file, key_id, count = sys.argv[1:]
    settings = Settings(
        database_dsn=url, master_passphrase_file=Path(passphrase_file), insecure_test_kdf_floor=1000
    )
    service = KMSService.from_settings(
        settings, SQLKeyRepository(create_kms_engine(url)), open_master_keyring(settings),
        cache=KeyMaterialCache(16),
    )
    sys.stdin.readline()  # start together with the threads
    for _ in range(int(count)):
        service.rotate_key(key_id)
    """
)


def test_concurrent_rotations_from_threads_and_processes_give_contiguous_versions(
    pg_settings: Settings, pg_service: KMSService
) -> None:
    key = pg_service.create_key("rotated")
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                ROTATE_IN_A_PROCESS,
                pg_settings.database_url,
                str(pg_settings.master_passphrase_file),
                key.key_id,
                str(PROCESS_ROTATIONS),
            ],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS + 1)

    def rotate() -> None:
        start.wait()
        try:
            for _ in range(THREAD_ROTATIONS):
                pg_service.rotate_key(key.key_id)
        except BaseException as error:  # collected and asserted on below
            errors.append(error)

    threads = [threading.Thread(target=rotate) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for thread in threads:
        thread.join()
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    assert errors == []
    expected = 1 + THREADS * THREAD_ROTATIONS + PROCESSES * PROCESS_ROTATIONS
    versions = [v.version for v in pg_service.list_versions(key.key_id, limit=1000)]
    assert versions == list(range(1, expected + 1))
