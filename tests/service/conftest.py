"""Keystores in process for the service tier: a real SQLite file in a tmp dir (or, with
``store``, PostgreSQL too), a passphrase file, the keyring and services as the app builds them;
and the app itself with its audit log on (``audited_app``, ``audited_client``).

Tests derive the master key with few PBKDF2 iterations (tests/helpers/keystore.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from kms.app import REPOSITORY, create_app
from kms.master import init_database, open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import Store, make_service, make_settings
from tests.helpers.tls import client_as


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def initialised(settings: Settings) -> Settings:
    init_database(settings)
    return settings


@pytest.fixture
def keyring(initialised: Settings) -> Iterator[RootKeyring]:
    keyring = open_master_keyring(initialised)
    yield keyring
    keyring.close()


@pytest.fixture
def repository(initialised: Settings) -> Iterator[SQLKeyRepository]:
    repository = SQLKeyRepository(create_kms_engine(initialised.database_url))
    yield repository
    repository.close()


@pytest.fixture
def service(repository: SQLKeyRepository, keyring: RootKeyring) -> KMSService:
    return make_service(repository, keyring, KeyMaterialCache(1024))


@pytest.fixture
def service_factory(
    initialised: Settings, keyring: RootKeyring
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


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An initialised keystore on a real SQLite file and, given --postgres-dsn, on PostgreSQL."""
    dsn = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    settings = make_settings(tmp_path, dsn)
    init_database(settings)
    store = Store(
        settings,
        open_master_keyring(settings),
        create_kms_engine(settings.database_url, pool=False),
    )
    yield store
    store.close()


@pytest.fixture
def app(initialised: Settings, keyring: RootKeyring) -> Flask:
    """The app as ``create_app`` builds it on the initialised keystore (a file may define its
    own, with a policy or other settings)."""
    return create_app(initialised, keyring=keyring)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of ``app`` whose requests come as ``cn:orchestrator``'s. In process: it
    hides, below tests/service, the session's HTTP client of tests/conftest.py, which no test
    here uses."""
    return client_as(app)


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def audited_app(initialised: Settings, keyring: RootKeyring, audit_path: Path) -> Iterator[Flask]:
    """The app as ``create_app`` builds it on the initialised keystore, writing its audit log to
    ``audit_path``; its repository is closed afterwards."""
    app = create_app(initialised.with_overrides(audit_path=audit_path), keyring=keyring)
    yield app
    app.extensions[REPOSITORY].close()


@pytest.fixture
def audited_client(audited_app: Flask) -> FlaskClient:
    """A test client of ``audited_app`` whose requests come as ``cn:orchestrator``'s."""
    return client_as(audited_app)
