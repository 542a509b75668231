"""Fixtures every tier may use: the command-line options, the machine's tools, a PostgreSQL
database per test, the shared kms server and one set of dev certificates.

Each tier keeps its own fixtures in its own conftest (tests/service/conftest.py: keystores in
process); helpers that are not fixtures live in tests/helpers/.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kms.master import open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    prepare_deployment,
    write_dev_certificates,
)
from tests.helpers.keystore import make_service
from tests.helpers.machine import unavailable
from tests.helpers.postgres import given_postgres_dsn, new_database


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--postgres-dsn",
        default=None,
        help="SQLAlchemy URL of a PostgreSQL server and a role with CREATEDB, for the PG tests",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.needs("openssl")``: skipped where a command is missing, failed in CI."""
    for marker in item.iter_markers("needs"):
        missing = [command for command in marker.args if shutil.which(command) is None]
        if missing:
            unavailable(f"the {' and '.join(missing)} command is not installed")


#: The order the tiers run in: the longest tests first.
TIER_ORDER = ("system", "http", "deploy", "service", "unit")
#: Modules whose shared fixtures take longest (an image build, a walkthrough against its own
#: server, a SoftHSM2 token and servers on it, the AWS Encryption SDK against its own server):
#: started before everything else, so that none of them is the last thing still running.
LONGEST_FIRST = (
    "deploy/test_container.py",
    "http/test_hsm_serving.py",
    "system/test_upgrade.py",
    "deploy/test_walkthrough.py",
    "http/test_aws_encryption_sdk.py",
    "deploy/test_systemd_units.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order pytest-xdist hands out the modules in (``make test``: ``--dist loadfile
    --no-loadscope-reorder``): each module goes whole to the next idle worker, so a module's
    own fixtures (a server, an image, an old release) are made once per run, not once per
    worker that runs some of its tests; the longest first, so none is the last one running."""
    root = Path(__file__).parent

    def order(item: pytest.Item) -> tuple[int, int]:
        relative = item.path.relative_to(root)
        module, tier = relative.as_posix(), relative.parts[0]
        return (
            LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST),
            TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER),
        )

    items.sort(key=order)  # stable: each module's tests stay together and in order


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    with new_database(given_postgres_dsn(request.config)) as url:
        yield url


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


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One set of dev certificates and a passphrase file (``kms dev-certs``'s files) for the
    tests that start servers or commands of their own. Read only: copy it to change a file."""
    directory = tmp_path_factory.mktemp("kms-certs")
    write_dev_certificates(directory)
    return directory


@pytest.fixture
def open_service() -> Iterator[Callable[[Settings], KMSService]]:
    """Opens a service on a keystore's settings as kms opens it (its master-key backend, its
    database); every one opened is closed after the test. For the upgrade and backend tests,
    which open a keystore made by other code."""
    opened: list[tuple[SQLKeyRepository, Any]] = []

    def build(settings: Settings) -> KMSService:
        keyring = open_master_keyring(settings)
        repository = SQLKeyRepository(create_kms_engine(settings.database_url))
        opened.append((repository, keyring))
        return make_service(repository, keyring, KeyMaterialCache(64))

    yield build
    for repository, keyring in opened:
        repository.close()
        keyring.close()
