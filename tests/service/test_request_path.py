"""The request path does each thing once (issue 12): one parse of the body, one schema load, no
parse of the answer for the audit line, and no second read of the key for the metrics.

Through the test client with every hook production has (policy file, audit log, metrics), on a
real SQLite keystore; the TLS session is the same small fake socket test_app.py uses.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from sqlalchemy import event

from kms.api import schemas
from kms.api.context import SERVICE
from kms.app import REPOSITORY, create_app
from kms.service.keyring import RootKeyring
from kms.settings import Settings
from tests.helpers.tls import FakeTLSSocket

POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
"""
PLAINTEXT = base64.b64encode(b"attack at dawn" * 20).decode()


@pytest.fixture
def app(initialised: Settings, keyring: RootKeyring, tmp_path: Path) -> Flask:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    settings = initialised.with_overrides(policy_file=policy, audit_path=tmp_path / "audit.log")
    return create_app(settings, keyring=keyring)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["gunicorn.socket"] = FakeTLSSocket("orchestrator", alt_names=())
    return client


def created(client: FlaskClient, key_id: str, purpose: str, algorithm: str | None = None) -> None:
    body = {"key_id": key_id, "purpose": purpose}
    if algorithm is not None:
        body["algorithm"] = algorithm
    response = client.post("/v1/kms/keys", json=body)
    assert response.status_code == 201, response.get_json()


@contextmanager
def counted(target: Any, name: str) -> Iterator[list[int]]:
    """Count the calls of ``target.name`` (a function or bound method) while inside."""
    calls = [0]
    original: Callable[..., Any] = getattr(target, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(target, name, counting)
        yield calls


@contextmanager
def key_reads(app: Flask) -> Iterator[list[str]]:
    """The SELECT statements on the keys table that the app's engine runs while inside."""
    engine = app.extensions[REPOSITORY]._engine
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        text = " ".join(statement.split()).lower()
        if text.startswith("select") and " from keys" in text:
            statements.append(text)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def crypto_count(operation: str, algorithm: str) -> float:
    value = REGISTRY.get_sample_value(
        "kms_crypto_operations_total", {"operation": operation, "algorithm": algorithm}
    )
    return value or 0.0


def test_a_request_parses_its_body_once_and_its_answer_never(client: FlaskClient) -> None:
    created(client, "orders", "encrypt")
    body = json.dumps({"key_id": "orders", "plaintext": PLAINTEXT})
    # The schema's fields, which its ``load`` and the fast loader (schemas.fast_load) both use.
    plaintext_field = schemas.encrypt_request.fields["plaintext"]
    with (
        counted(json, "loads") as loads,
        counted(plaintext_field, "deserialize") as schema_loads,
    ):
        response = client.post("/v1/kms/encrypt", data=body, content_type="application/json")
    assert response.status_code == 200
    # The body once (the hooks and the view share it); the answer not at all (the audit line
    # takes its version from the view).
    assert loads[0] == 1
    assert schema_loads[0] == 1


def test_the_audit_line_names_the_version_of_every_kind_of_answer(
    client: FlaskClient, tmp_path: Path
) -> None:
    created(client, "orders", "encrypt")
    assert client.post("/v1/kms/keys/orders/rotate").status_code == 200
    encrypted = client.post("/v1/kms/encrypt", json={"key_id": "orders", "plaintext": PLAINTEXT})
    batch = client.post(
        "/v1/kms/encrypt", json={"key_id": "orders", "batch": [{"plaintext": PLAINTEXT}]}
    )
    missing = client.post("/v1/kms/encrypt", json={"key_id": "absent", "plaintext": PLAINTEXT})
    assert (encrypted.status_code, batch.status_code, missing.status_code) == (200, 200, 404)
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    answers = [(line["path"], line["key_version"]) for line in lines if line["type"] == "response"]
    assert answers == [
        ("/v1/kms/keys", 1),
        ("/v1/kms/keys/orders/rotate", 2),
        ("/v1/kms/encrypt", 2),
        ("/v1/kms/encrypt", None),  # a batch answer names no single version
        ("/v1/kms/encrypt", None),
    ]


@pytest.mark.parametrize(
    ("purpose", "algorithm", "path", "body", "operation"),
    [
        ("encrypt", "AES-256-GCM", "/v1/kms/encrypt", {"plaintext": PLAINTEXT}, "encrypt"),
        ("encrypt", "ChaCha20-Poly1305", "/v1/kms/datakey", {}, "datakey"),
        ("sign", "Ed25519", "/v1/kms/sign", {"message": PLAINTEXT}, "sign"),
        ("sign", "ECDSA-P256", "/v1/kms/sign", {"message": PLAINTEXT}, "sign"),
        ("mac", "HMAC-SHA256", "/v1/kms/mac", {"message": PLAINTEXT}, "mac"),
        (
            "encrypt",
            "AES-256-GCM",
            "/v1/kms/encrypt",
            {"batch": [{"plaintext": PLAINTEXT}] * 3 + [{"plaintext": "%"}]},
            "encrypt",
        ),
    ],
)
def test_metrics_count_by_algorithm_without_reading_the_key_again(
    app: Flask,
    client: FlaskClient,
    purpose: str,
    algorithm: str,
    path: str,
    body: dict[str, Any],
    operation: str,
) -> None:
    created(client, "subject", purpose, algorithm)
    service = app.extensions[SERVICE]
    call: Callable[[], Any] = {
        "encrypt": lambda: service.encrypt("subject", b"x"),
        "datakey": lambda: service.generate_data_key("subject"),
        "sign": lambda: service.sign("subject", b"x"),
        "mac": lambda: service.mac("subject", b"x"),
    }[operation]
    call()  # warm: material cached, use counters reserved
    with key_reads(app) as by_service:
        call()
    before = crypto_count(operation, algorithm)
    with key_reads(app) as by_request:
        response = client.post(path, json={"key_id": "subject", **body})
    assert response.status_code == 200, response.get_json()
    # The HTTP request reads the key exactly as often as the service call alone does.
    assert len(by_request) == len(by_service), by_request
    done = len(body["batch"]) - 1 if "batch" in body else 1
    assert crypto_count(operation, algorithm) == before + done


def test_a_failed_operation_is_not_counted_and_reads_nothing_more(
    app: Flask, client: FlaskClient
) -> None:
    before = crypto_count("encrypt", "unknown")
    with key_reads(app) as reads:
        response = client.post("/v1/kms/encrypt", json={"key_id": "absent", "plaintext": "AA=="})
    assert response.status_code == 404
    assert len(reads) <= 1  # the service's own lookup, nothing for the metrics
    assert crypto_count("encrypt", "unknown") == before


def test_a_connection_s_certificate_is_decoded_once_for_all_its_requests(app: Flask) -> None:
    first, second = FakeTLSSocket(), FakeTLSSocket()  # two connections
    client = app.test_client()
    for connection in (first, first, first, second):
        client.environ_base["gunicorn.socket"] = connection
        assert client.get("/v1/kms/keys").status_code == 200
    assert (first.reads, second.reads) == (1, 1)


def test_a_connection_without_a_certificate_is_refused_every_time(app: Flask) -> None:
    class NoCertificate:
        def getpeercert(self) -> dict[str, Any]:
            return {}

    client = app.test_client()
    client.environ_base["gunicorn.socket"] = NoCertificate()
    assert [client.get("/v1/kms/keys").status_code for _ in range(2)] == [401, 401]
