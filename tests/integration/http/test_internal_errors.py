"""A fault of the server's own data answers 500 "internal error"; the detail is only in the log."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing

import pytest

from tests.integration.http.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    create_key,
    unique_key_id,
)

pytestmark = pytest.mark.slow


def test_a_wrapped_key_moved_to_another_key_is_an_internal_error(
    client: KMSClient, deployment: Deployment, server: ServerProcess
) -> None:
    # Two keys nobody has used yet, so no worker holds either in its cache.
    victim = create_key(client, key_id=unique_key_id("victim"))["key_id"]
    donor = create_key(client, key_id=unique_key_id("donor"))["key_id"]
    with closing(sqlite3.connect(deployment.database)) as db, db:
        db.execute(
            "UPDATE key_versions SET wrapped_key = "
            "(SELECT wrapped_key FROM key_versions WHERE key_id = ? AND version = 1) "
            "WHERE key_id = ? AND version = 1",
            (donor, victim),
        )

    response = client.post("/v1/kms/encrypt", json={"key_id": victim, "plaintext": b64(b"x")})

    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": "internal error"}
    request_id = response.headers["X-Request-Id"]
    line = wait_for_log_line(server, f"request {request_id} failed")
    assert "UnwrapFailed" in line
    assert "Traceback" not in server.output()


def wait_for_log_line(server: ServerProcess, needle: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in server.output().splitlines():
            if needle in line:
                return line
        time.sleep(0.05)
    pytest.fail(f"no log line with {needle!r}:\n{server.output()}")
