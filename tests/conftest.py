"""Shared fixtures: a real SQLite file in a tmp dir, a passphrase file, an initialised keystore.

Tests derive the master key with few PBKDF2 iterations (through the Settings object they build,
``insecure_test_kdf_floor``, which no config file or environment variable can set); production
and every config file use at least 600,000, on write and on read.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hypothesis import strategies as st

from kms.master import init_database, open_master_keyring
from kms.service.cache import KeyMaterialCache, KeyRowCache
from kms.service.keyring import Keyring, PassphraseKeyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.records import KeyRepository, utc_now
from kms.store.repository import SQLKeyRepository
from tests.helpers.harness import Deployment, KMSClient, ServerProcess, prepare_deployment

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


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


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
    return make_service(repository, keyring, KeyMaterialCache(1024))


@pytest.fixture
def service_factory(
    initialised: Settings, keyring: PassphraseKeyring
) -> Iterator[Callable[[], KMSService]]:
    """Build more services on the same database, each with its own engine and an empty cache.

    Each stands for another gunicorn worker: it shares nothing in memory with ``service``.
    """
    repositories: list[SQLKeyRepository] = []

    def build() -> KMSService:
        repository = SQLKeyRepository(create_kms_engine(initialised.database_url))
        repositories.append(repository)
        return make_service(repository, keyring, KeyMaterialCache(1024))

    yield build
    for repository in repositories:
        repository.close()


@pytest.fixture(scope="module")
def module_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KMSService]:
    """One initialised keystore and service per test module.

    For hypothesis tests (function-scoped fixtures are not reset between examples) and for long
    parametrized lists that only read: a keystore per case would cost a schema migration each.
    """
    module_settings = make_settings(tmp_path_factory.mktemp("module-kms"))
    init_database(module_settings)
    module_keyring = open_master_keyring(module_settings)
    repository = SQLKeyRepository(create_kms_engine(module_settings.database_url))
    yield make_service(repository, module_keyring, KeyMaterialCache(1024))
    repository.close()
    module_keyring.close()


# -- what a test needs from the machine ---------------------------------------------------------
#
# A test that needs something the machine lacks (PostgreSQL, a command such as openssl, newman,
# the git history of an earlier release) is skipped on a developer's machine, and the skip is
# reported (-ra). In CI it fails instead: `.ci/run` installs all of it, so a missing piece there
# is a broken CI machine, and a skip would let the suite shrink without anyone noticing. CI is
# the one variable of the environment the tests read: it changes what a missing tool means,
# never what a test does.


def in_ci() -> bool:
    """True when the CI variable says so: ``true`` (as CI services and `.ci/run` set it), ``1``
    or ``yes``."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for want of ``reason``, or fail it in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: .ci/run provides it there)", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("needs"):
        missing = [command for command in marker.args if shutil.which(command) is None]
        if missing:
            unavailable(f"the {' and '.join(missing)} command is not installed")


# -- PostgreSQL ---------------------------------------------------------------------------------
#
# The PostgreSQL tests run when pytest is given --postgres-dsn (`.ci/run` starts the machine's
# PostgreSQL and passes it through `make test`); without it they are skipped, or fail in CI. The
# DSN names a role that may create databases: each test gets a database of its own, dropped
# afterwards.


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--postgres-dsn",
        default=None,
        help="SQLAlchemy URL of a PostgreSQL server and a role with CREATEDB, for the PG tests",
    )


def given_postgres_dsn(config: pytest.Config) -> str:
    """The --postgres-dsn of this run; without one the test is skipped (failed in CI)."""
    dsn = config.getoption("--postgres-dsn")
    if not dsn:
        unavailable("no --postgres-dsn given")
    return dsn


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    dsn = given_postgres_dsn(request.config)
    name = f"kms_test_{random.getrandbits(64):016x}"
    admin = create_engine(dsn, isolation_level="AUTOCOMMIT", hide_parameters=True)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(dsn).set(database=name).render_as_string(hide_password=False)
        drop_database(admin, name)
    finally:
        admin.dispose()


def drop_database(admin: Any, name: str) -> None:
    """Drop a test database, its sessions ended. An autovacuum worker that happens to be in it
    is not ours to end (without pg_signal_backend the DROP is refused): it finishes in a moment,
    so the DROP is tried again for a while before the refusal counts."""
    from sqlalchemy import text
    from sqlalchemy.exc import ProgrammingError

    for attempt in range(50):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError:
            if attempt == 49:
                raise
            time.sleep(0.2)


# -- the shared server --------------------------------------------------------------------------
#
# One real kms server for the whole session: gunicorn, two gthread workers, mutual TLS. Started
# once per session and worker (a start costs about a second), by the first test that asks for it:
# the HTTP tests, and the system and deploy tests that need a server but not one of their own.
# Tests that need their own process, such as the startup failures, start it themselves.


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return prepare_deployment(tmp_path_factory.mktemp("kms-server"))


@pytest.fixture(scope="session")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    server = ServerProcess(deployment)
    probe = KMSClient(deployment)
    try:
        server.wait_until_serving(probe)
    finally:
        probe.close()
    yield server
    returncode = server.stop()
    output = server.output()
    assert returncode == 0, f"kms serve exited {returncode} on SIGTERM:\n{output}"
    # A 500 is logged with its traceback; none may have happened in the whole session.
    assert "Traceback" not in output, output


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[KMSClient]:
    client = KMSClient(server.deployment)
    yield client
    client.close()
