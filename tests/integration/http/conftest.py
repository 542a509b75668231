"""One real kms server for the whole package: gunicorn, two gthread workers, mutual TLS.

Started once per session (a start costs about a second); tests that need their own process,
such as the startup failures, start it themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.http.harness import Deployment, KMSClient, ServerProcess, prepare_deployment


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
