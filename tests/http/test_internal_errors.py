"""A fault of the server's own data answers 500 "internal error"; the detail is only in the log."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing

import pytest

from tests.helpers.harness import (
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
    assert "IntegrityFailure" in line
    # The operator's line names the key and the row whose MAC failed.
    detail = wait_for_log_line(server, "integrity check failed")
    assert f"key {victim!r}: version 1: MAC does not match" in detail
    assert "Traceback" not in server.output()


def test_a_swapped_public_key_is_an_internal_error_not_a_valid_signature(
    client: KMSClient, deployment: Deployment, server: ServerProcess
) -> None:
    # Finding 1 of issue 14, over HTTP: the attacker puts their own public key in the row and
    # signs with their private key. verify must not say "valid", and export must not hand it out.
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from kms.crypto.algorithms import public_key_der

    key_id = create_key(
        client, key_id=unique_key_id("signer"), purpose="sign", algorithm="Ed25519"
    )["key_id"]
    attacker = ed25519.Ed25519PrivateKey.generate()
    with closing(sqlite3.connect(deployment.database)) as db, db:
        db.execute(
            "UPDATE key_versions SET public_key = ? WHERE key_id = ? AND version = 1",
            (public_key_der(attacker.public_key()), key_id),
        )
    message = b"pay the attacker"
    verify = client.post(
        "/v1/kms/verify",
        json={
            "key_id": key_id,
            "message": b64(message),
            "signature": b64(attacker.sign(message)),
        },
    )
    assert verify.status_code == 500, verify.text
    assert verify.json() == {"error": "internal error"}
    export = client.get(f"/v1/kms/keys/{key_id}/public-key")
    assert export.status_code == 500, export.text
    assert export.json() == {"error": "internal error"}
    assert f"key {key_id!r}: version 1: MAC does not match" in wait_for_log_line(
        server, f"key {key_id!r}"
    )


def wait_for_log_line(server: ServerProcess, needle: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in server.output().splitlines():
            if needle in line:
                return line
        time.sleep(0.05)
    pytest.fail(f"no log line with {needle!r}:\n{server.output()}")
