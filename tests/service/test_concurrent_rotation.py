"""Rotations from many threads and from other processes at once hand out every version once.

Threads share one engine (as gunicorn threads in one worker do); the processes each open their
own engine and keyring on the same SQLite file (as separate gunicorn workers do). Nobody starts
rotating until everybody is ready, so the writers really do contend for the lock.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kms.crypto.algorithms import SIGNING_ALGORITHMS, load_public_key, public_key_der
from kms.crypto.wrapping import KeyIdentity
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.repository import SQLKeyRepository

THREADS = 8
PROCESSES = 2
ROTATIONS = 10
KEY = "contended"

# Run by each child process: open the keystore like a worker, report ready, wait for the go line
# on stdin, rotate, and print the versions it was given.
WORKER = """
import sys
from pathlib import Path

from kms.master import open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository

database, passphrase_file, key_id, rotations = sys.argv[1:]
settings = Settings(
    database_dsn=database,
    master_passphrase_file=Path(passphrase_file),
    insecure_test_kdf_floor=1000,
)
keyring = open_master_keyring(settings)
repository = SQLKeyRepository(create_kms_engine(settings.database_url))
service = KMSService.from_settings(settings, repository, keyring, cache=KeyMaterialCache(16))
print("ready", flush=True)
sys.stdin.readline()
versions = [service.rotate_key(key_id).version for _ in range(int(rotations))]
repository.close()
keyring.close()
print(" ".join(map(str, versions)), flush=True)
"""


def start_worker(settings: Settings, cwd: Path) -> subprocess.Popen[str]:
    assert settings.master_passphrase_file is not None
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            settings.database_dsn,
            str(settings.master_passphrase_file),
            KEY,
            str(ROTATIONS),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


@pytest.mark.slow
def test_concurrent_rotations_from_threads_and_processes(
    tmp_path: Path,
    initialised: Settings,
    keyring: RootKeyring,
    repository: SQLKeyRepository,
    service: KMSService,
    service_factory: Callable[[], KMSService],
) -> None:
    service.create_key(KEY, "sign", "ECDSA-P256")
    workers = [start_worker(initialised, tmp_path) for _ in range(PROCESSES)]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line == "ready\n", worker.communicate()[1]

        # Half the threads share the fixture's service, half have one each: both must be safe.
        thread_services = [service if i % 2 else service_factory() for i in range(THREADS)]
        # The timeout only turns a hang (a thread that never arrives) into an error.
        start = threading.Barrier(THREADS + 1, timeout=120)

        def rotate(thread_service: KMSService) -> list[int]:
            start.wait()
            return [thread_service.rotate_key(KEY).version for _ in range(ROTATIONS)]

        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            futures = [pool.submit(rotate, thread_service) for thread_service in thread_services]
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            start.wait()
            thread_versions = [future.result() for future in futures]  # re-raises any error

        process_versions: list[list[int]] = []
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=120)
            assert worker.returncode == 0, stderr
            process_versions.append([int(version) for version in stdout.split()])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    handed_out = [v for versions in thread_versions + process_versions for v in versions]
    total = (THREADS + PROCESSES) * ROTATIONS
    assert all(len(versions) == ROTATIONS for versions in thread_versions + process_versions)
    # Each caller sees its own rotations in increasing order, and no number is given twice.
    assert all(versions == sorted(versions) for versions in thread_versions + process_versions)
    assert sorted(handed_out) == list(range(2, total + 2))

    assert service.get_key(KEY).version == total + 1
    stored = repository.list_versions(KEY)
    assert [record.version for record in stored] == list(range(1, total + 2))
    # Each version was wrapped under its own number, and its public key belongs to its secret.
    spec = SIGNING_ALGORITHMS["ECDSA-P256"]
    incarnation = repository.get_key(KEY).incarnation
    for record in stored:
        identity = KeyIdentity(KEY, record.version, "sign", "ECDSA-P256", incarnation)
        private_key = spec.load(keyring.unwrap(record.wrapped_key, identity))
        assert record.public_key is not None
        assert public_key_der(private_key.public_key()) == record.public_key
    assert len({record.public_key for record in stored}) == total + 1
    # Every row the racing writers left is authentic: each MAC was computed for the row it is in.
    report = service.check_integrity()
    assert (report.keys, report.versions, report.failures) == (1, total + 1, [])
    # And the newest is what the service signs with.
    signature = service.sign(KEY, b"after the storm").signature
    spec.verify(load_public_key(stored[-1].public_key), b"after the storm", signature)
