"""/healthz and /readyz: the process answers, and the database and master key are usable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.helpers.config import write_config
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    expect_json,
    free_port,
    initialise_database,
    write_dev_certificates,
)
from tests.helpers.identities import running_server

pytestmark = pytest.mark.slow


def test_readyz_says_when_the_database_is_unreachable(
    tmp_path: Path, postgres_url: str, request: pytest.FixtureRequest
) -> None:
    write_dev_certificates(tmp_path)
    initialise_database(postgres_url, tmp_path / "master.key")
    deployment = Deployment(directory=tmp_path, port=free_port())
    write_config(deployment.config, directory=tmp_path, port=deployment.port, dsn=postgres_url)
    name = make_url(postgres_url).database
    admin = create_engine(request.config.getoption("--postgres-dsn"), isolation_level="AUTOCOMMIT")
    try:
        with running_server(deployment):
            client = KMSClient(deployment)
            try:
                assert expect_json(client.get("/readyz"), 200) == {
                    "status": "ready",
                    "master_key_backend": "passphrase",
                }
                with admin.connect() as conn:
                    conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :name AND pid <> pg_backend_pid()"
                        ),
                        {"name": name},
                    )
                response = client.get("/readyz")
                assert response.status_code == 503, response.text
                assert response.json() == {"error": "not ready: database unreachable"}
                # The process itself still answers: /healthz never touches the database.
                assert expect_json(client.get("/healthz"), 200) == {"status": "ok"}
                with admin.connect() as conn:
                    conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
                wait_until_ready(client)
            finally:
                client.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def wait_until_ready(client: KMSClient) -> None:
    """Poll /readyz until 200; a safety limit, not an assertion about time."""
    deadline = time.monotonic() + 30
    while (response := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)
