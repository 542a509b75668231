"""One audit line for what changes nothing, two for a change (docs/security.md, Audit log;
``kms.api.audit``).

An operation that changes nothing stored about a key (encrypt, decrypt, sign, verify, data keys,
MAC, random, reads) writes one ``response`` line, holding the request and its outcome, after the
view and before the answer leaves; if that line cannot be written the client gets the 503 and
never the result. An operation that changes a key writes its ``request`` line before the store
changes, and its ``response`` line when answered. In process, with Flask's test client; the
audit file is sealed (no write bit) from inside the service call, so that only the line written
after the view fails.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from kms.api.audit import AUDIT_SUMMARY
from kms.api.context import SERVICE
from kms.api.operations import CHANGES_NOTHING, KNOWN_OPERATIONS
from kms.app import REPOSITORY
from kms.audit import AuditKey
from kms.audit_verify import verify_files
from kms.service.keyring import RootKeyring

REFUSAL = {"error": "audit log unavailable, request refused"}
SECRET = b"the one line or nothing at all"
PLAINTEXT = base64.b64encode(SECRET).decode()
MESSAGE = base64.b64encode(b"a message to sign").decode()


@pytest.fixture
def client(audited_client: FlaskClient) -> FlaskClient:
    """The audited client, with an encryption key ``data`` and a signing key ``signer``."""
    client = audited_client
    for key_id, purpose in (("data", "encrypt"), ("signer", "sign")):
        created = client.post("/v1/kms/keys", json={"key_id": key_id, "purpose": purpose})
        assert created.status_code == 201
    return client


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def sealed_after(
    monkeypatch: pytest.MonkeyPatch, target: object, name: str, audit_path: Path
) -> list[Any]:
    """Make ``target.name`` run, then seal the audit file: the view has its result, and only a
    line written after it fails. The results it returned are collected."""
    real: Callable[..., Any] = getattr(target, name)
    results: list[Any] = []

    def then_seal(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        results.append(result)
        os.chmod(audit_path, 0o444)
        return result

    monkeypatch.setattr(target, name, then_seal)
    return results


def test_a_use_of_a_key_is_one_line_holding_the_request_and_its_outcome(
    client: FlaskClient, audit_path: Path, keyring: RootKeyring
) -> None:
    before = len(records(audit_path))
    response = client.post("/v1/kms/encrypt", json={"key_id": "data", "plaintext": PLAINTEXT})
    assert response.status_code == 200
    (line,) = records(audit_path)[before:]
    assert line["type"] == "response"
    assert line["request_id"] == response.headers["X-Request-Id"]
    assert (line["identity"], line["operation"], line["key_id"]) == (
        "cn:orchestrator",
        "encrypt",
        "data",
    )
    assert (line["method"], line["path"], line["status"], line["key_version"]) == (
        "POST",
        "/v1/kms/encrypt",
        200,
        1,
    )
    assert verify_files([audit_path], AuditKey.of(keyring)).failure is None


@pytest.mark.parametrize(
    ("service_call", "path", "body", "shape"),
    [
        ("encrypt", "/v1/kms/encrypt", {"key_id": "data", "plaintext": PLAINTEXT}, REFUSAL),
        ("sign", "/v1/kms/sign", {"key_id": "signer", "message": MESSAGE}, REFUSAL),
        ("generate_data_key", "/v1/kms/datakey", {"key_id": "data"}, REFUSAL),
        (
            "encrypt",
            "/v1/transit/encrypt/data",
            {"plaintext": PLAINTEXT},
            {"errors": ["audit log unavailable, request refused"]},
        ),
        (
            "encrypt",
            "/v1/aws-kms/Encrypt",
            {"KeyId": "data", "Plaintext": PLAINTEXT},
            {"__type": "KMSInternalException", "message": "audit log unavailable, request refused"},
        ),
    ],
    ids=["encrypt", "sign", "datakey", "vault-encrypt", "aws-encrypt"],
)
def test_a_result_whose_only_line_cannot_be_written_never_leaves(
    audited_app: Flask,
    client: FlaskClient,
    audit_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    service_call: str,
    path: str,
    body: dict[str, Any],
    shape: dict[str, Any],
) -> None:
    audited = audit_path.read_bytes()
    results = sealed_after(monkeypatch, audited_app.extensions[SERVICE], service_call, audit_path)
    aws = "aws-kms" in path
    headers = {"Content-Type": "application/x-amz-json-1.1" if aws else "application/json"}
    try:
        response = client.post(path, data=json.dumps(body), headers=headers)
    finally:
        os.chmod(audit_path, 0o600)
    assert len(results) == 1, response.data  # the operation ran: its answer was ready
    assert (response.status_code, json.loads(response.data)) == (503, shape)
    # Nothing of the result in the answer: no ciphertext, signature, data key or plaintext.
    result = results[0]
    for value in vars(result).values():
        if isinstance(value, bytes) and len(value) >= 8:
            assert value not in response.data
            assert base64.b64encode(value) not in response.data
    assert SECRET not in response.data and PLAINTEXT.encode() not in response.data
    assert audit_path.read_bytes() == audited  # not even half a line
    assert response.headers["X-Request-Id"]
    if aws:
        assert response.headers["x-amzn-RequestId"] == response.headers["X-Request-Id"]


def test_a_change_writes_its_request_line_before_the_store_changes(
    audited_app: Flask, client: FlaskClient, audit_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """And its answer line after; a rotation (a change) whose arrival line cannot be written is
    refused before the store is touched."""
    repository = audited_app.extensions[REPOSITORY]
    seen: list[dict[str, Any]] = []
    real = repository.rotate_key

    def rotate_key(*args: Any, **kwargs: Any) -> Any:
        seen.append(records(audit_path)[-1])  # the newest line when the store is about to change
        return real(*args, **kwargs)

    monkeypatch.setattr(repository, "rotate_key", rotate_key)
    response = client.post("/v1/kms/keys/data/rotate")
    assert response.status_code == 200
    request_id = response.headers["X-Request-Id"]
    (arrival,) = seen
    assert (arrival["type"], arrival["request_id"], arrival["operation"]) == (
        "request",
        request_id,
        "keys:rotate",
    )
    mine = [line for line in records(audit_path) if line.get("request_id") == request_id]
    assert [line["type"] for line in mine] == ["request", "response"]
    assert mine[1]["key_generation"] > 0

    os.chmod(audit_path, 0o444)
    try:
        refused = client.post("/v1/kms/keys/data/rotate")
    finally:
        os.chmod(audit_path, 0o600)
    assert (refused.status_code, refused.get_json()) == (503, REFUSAL)
    assert len(seen) == 1  # the store was not asked to change
    versions = client.get("/v1/kms/keys/data/versions").get_json()
    assert [version["version"] for version in versions] == [1, 2]
    # It did nothing, so it is counted in the identity's summary (docs/operations.md).
    assert not [line for line in records(audit_path) if line.get("type") == "summary"]
    audited_app.extensions[AUDIT_SUMMARY].flush()
    (summary,) = [line for line in records(audit_path) if line.get("type") == "summary"]
    assert (summary["statuses"], summary["operations"]) == ({"503": 1}, {"keys:rotate": 1})


def test_only_operations_that_change_nothing_stored_are_written_as_one_line() -> None:
    """The list docs/security.md names; every other operation (each key and alias change, and
    any operation added later) keeps its request line."""
    assert {
        "encrypt",
        "decrypt",
        "sign",
        "verify",
        "datakey",
        "rewrap",
        "mac",
        "mac:verify",
        "random",
        "hash",
        "keys:read",
        "metrics",
    } == CHANGES_NOTHING
    assert CHANGES_NOTHING <= KNOWN_OPERATIONS
    changes = KNOWN_OPERATIONS - CHANGES_NOTHING
    assert all(name.startswith(("keys:", "aliases:")) for name in changes)
