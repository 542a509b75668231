"""The Flask app through its test client, on a real SQLite keystore.

The TLS session is played by a small fake socket that answers getpeercert() as gunicorn's
SSLSocket does; the real handshake is covered by the gunicorn tests in tests/http.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from kms.api.aws import AWS_OPERATIONS, PREFIX
from kms.app import KMSFlask, create_app
from kms.service.keyring import RootKeyring
from kms.settings import Settings, load_settings
from tests.helpers.keystore import make_service
from tests.helpers.tls import client_as


def test_a_request_without_a_client_certificate_is_401(app: Flask) -> None:
    response = app.test_client().get("/v1/kms/keys")
    assert response.status_code == 401
    assert response.get_json() == {"error": "client certificate required"}


def test_encrypt_decrypt_round_trip(client: FlaskClient) -> None:
    assert client.post("/v1/kms/keys", json={"key_id": "k1"}).status_code == 201
    plaintext = base64.b64encode(b"attack at dawn").decode()
    encrypted = client.post("/v1/kms/encrypt", json={"key_id": "k1", "plaintext": plaintext})
    assert encrypted.status_code == 200
    decrypted = client.post(
        "/v1/kms/decrypt", json={"key_id": "k1", "ciphertext": encrypted.get_json()["ciphertext"]}
    )
    assert decrypted.get_json() == {"plaintext": plaintext, "key_id": "k1", "version": 1}


def test_every_response_has_its_own_request_id(client: FlaskClient) -> None:
    """A fresh UUID4 per request, on errors too, never taken from the caller (the access log
    writes the same id: tests/http/test_tls.py finds lines by it)."""
    responses = [
        client.get("/v1/kms/keys"),
        client.get("/v1/kms/keys", headers={"X-Request-Id": "0" * 32}),
        client.get("/v1/kms/keys/missing"),
        client.post("/v1/kms/keys", data="{", content_type="application/json"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 404, 400]
    ids = [r.headers["X-Request-Id"] for r in responses]
    for request_id in ids:
        assert uuid.UUID(hex=request_id).version == 4
        assert request_id == uuid.UUID(hex=request_id).hex  # 32 lowercase hex digits
    assert len(set(ids)) == len(ids)
    assert "0" * 32 not in ids


def test_a_configured_body_limit_is_the_limit(initialised: Settings, tmp_path: Path) -> None:
    """``server.max_body_bytes`` from a config file, not only the 1 MiB default, decides the 413."""
    config = tmp_path / "limit.yaml"
    config.write_text(
        f"server:\n  max_body_bytes: 2048\ndatabase:\n  dsn: {initialised.database_dsn}\n",
        encoding="utf-8",
    )
    settings = load_settings(config, environ={}).with_overrides(
        master_passphrase_file=initialised.master_passphrase_file,
        # The test database is made with few PBKDF2 iterations (tests/helpers/keystore.py).
        insecure_test_kdf_floor=initialised.insecure_test_kdf_floor,
    )
    assert settings.max_body_bytes == 2048
    client = client_as(create_app(settings))

    def body(size: int, key_id: str) -> str:
        text = json.dumps({"key_id": key_id})
        return text + " " * (size - len(text))

    over = client.post("/v1/kms/keys", data=body(2049, "over"), content_type="application/json")
    assert over.status_code == 413
    assert over.get_json() == {"error": over.get_json()["error"]}
    at = client.post("/v1/kms/keys", data=body(2048, "at"), content_type="application/json")
    assert at.status_code == 201, at.get_json()
    # Well under the default limit, yet over the configured one.
    big = client.post("/v1/kms/keys", data=body(4096, "big"), content_type="application/json")
    assert big.status_code == 413


# One request per kind of failure: each must come back as {"error": "<message>"} with its status.
ERROR_CASES = [
    ("post", "/v1/kms/keys", {"data": "{", "content_type": "application/json"}, 400),
    ("post", "/v1/kms/keys", {"data": "{}", "content_type": "text/plain"}, 415),
    ("post", "/v1/kms/keys", {"json": {"key_id": "x", "colour": "blue"}}, 400),
    ("post", "/v1/kms/keys", {"json": {"key_id": "../x"}}, 400),
    ("post", "/v1/kms/keys", {"json": {"purpose": "sign", "algorithm": "AES-256-GCM"}}, 400),
    ("post", "/v1/kms/keys", {"json": {"algorithm": "ROT13"}}, 400),
    ("post", "/v1/kms/keys", {"json": {"key_id": "dup"}}, 409),
    ("get", "/v1/kms/keys?limit=0", {}, 400),
    ("get", "/v1/kms/keys?limit=3.9", {}, 400),
    ("get", "/v1/kms/keys/missing", {}, 404),
    ("delete", "/v1/kms/keys/missing", {}, 404),
    ("post", "/v1/kms/encrypt", {"json": {"key_id": "dup", "plaintext": "not base64!"}}, 400),
    ("post", "/v1/kms/encrypt", {"json": {"key_id": "missing", "plaintext": ""}}, 404),
    ("post", "/v1/kms/decrypt", {"json": {"key_id": "dup", "ciphertext": "djA6AAAA"}}, 400),
    ("post", "/v1/kms/sign", {"json": {"key_id": "dup", "message": ""}}, 400),
    ("get", "/v1/kms/nowhere", {}, 404),
    ("put", "/v1/kms/encrypt", {}, 405),
    (
        "post",
        "/v1/kms/encrypt",
        {"data": "x" * (1024 * 1024 + 1), "content_type": "application/json"},
        413,
    ),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), ERROR_CASES)
def test_every_error_has_the_same_json_shape(
    client: FlaskClient, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    assert client.post("/v1/kms/keys", json={"key_id": "dup"}).status_code == 201
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str) and body["error"]


def test_delete_answers_204_with_no_body_and_no_content_type(client: FlaskClient) -> None:
    assert client.post("/v1/kms/keys", json={"key_id": "gone"}).status_code == 201
    response = client.delete("/v1/kms/keys/gone")
    assert response.status_code == 204
    assert response.data == b""
    assert "Content-Type" not in response.headers
    assert client.get("/v1/kms/keys/gone").status_code == 404


def test_a_failing_database_answers_503_and_logs_the_cause(
    client: FlaskClient, initialised: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.post("/v1/kms/keys", json={"key_id": "k1"}).status_code == 201
    database = initialised.database_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(database)) as db, db:
        db.execute("DROP TABLE key_versions")

    response = client.post("/v1/kms/keys/k1/rotate")

    assert response.status_code == 503
    assert response.get_json() == {"error": "storage unavailable, retry later"}
    assert "StoreUnavailable (OperationalError" in caplog.text


def test_a_rotate_whose_key_changed_meanwhile_answers_409_and_writes_nothing(
    app: Flask, client: FlaskClient, service_factory: Any, keyring: RootKeyring
) -> None:
    from kms.api.context import SERVICE
    from kms.app import REPOSITORY
    from kms.service.cache import KeyMaterialCache

    assert client.post("/v1/kms/keys", json={"key_id": "raced"}).status_code == 201
    other = service_factory()

    def recreate_as_signing_key(key_id: str) -> None:
        other.delete_key(key_id)
        other.create_key(key_id, "sign", "Ed25519")

    # The same wiring create_app does, plus the test hook between generation and write.
    app.extensions[SERVICE] = make_service(
        app.extensions[REPOSITORY],
        keyring,
        KeyMaterialCache(16),
        after_generation=recreate_as_signing_key,
    )
    response = client.post("/v1/kms/keys/raced/rotate")
    assert response.status_code == 409
    assert response.get_json() == {
        "error": "the key changed during the operation; nothing was written, retry"
    }
    key = client.get("/v1/kms/keys/raced").get_json()
    assert (key["algorithm"], key["version"]) == ("Ed25519", 1)
    assert [v["version"] for v in key["key_versions"]] == [1]


def test_the_app_keeps_flasks_answer_to_ensure_sync_and_a_bounded_number_of_them() -> None:
    """``KMSFlask.ensure_sync`` keeps, per function, what Flask's answers: a plain function
    as it is; an ``async def`` goes to Flask every time (which refuses it without asgiref, as
    kms is installed); and it keeps at most ``MAX_KEPT`` answers."""
    app = KMSFlask("probe")

    def plain() -> str:
        return "plain"

    async def coroutine() -> str:
        return "awaited"

    assert app.ensure_sync(plain) is plain and app.ensure_sync(plain) is plain
    for flask_app in (Flask("plain"), app, app):
        with pytest.raises(RuntimeError, match="async"):
            flask_app.ensure_sync(coroutine)
    made_per_call = [lambda: None for _ in range(KMSFlask.MAX_KEPT + 10)]
    for function in made_per_call:
        assert app.ensure_sync(function) is function
    assert len(app._sync) == KMSFlask.MAX_KEPT


def test_a_ciphertext_that_does_not_authenticate_is_counted_as_invalid(
    client: FlaskClient,
) -> None:
    """docs/security.md: every refused ciphertext gets the same answer, and
    `kms_decryptions_refused_total{reason="invalid"}` counts those that did not authenticate
    (in process; tests/http/test_decryption_refusals.py does it over TLS)."""
    from prometheus_client import REGISTRY

    def invalid() -> float:
        labels = {"reason": "invalid"}
        return REGISTRY.get_sample_value("kms_decryptions_refused_total", labels) or 0.0

    assert client.post("/v1/kms/keys", json={"key_id": "k1"}).status_code == 201
    plaintext = base64.b64encode(b"attack at dawn").decode()
    encrypted = client.post("/v1/kms/encrypt", json={"key_id": "k1", "plaintext": plaintext})
    raw = bytearray(base64.b64decode(encrypted.get_json()["ciphertext"]))
    raw[-1] ^= 1  # a bit of the tag
    before = invalid()
    refused = client.post(
        "/v1/kms/decrypt", json={"key_id": "k1", "ciphertext": base64.b64encode(raw).decode()}
    )
    assert refused.get_json() == {"error": "invalid ciphertext"}
    assert invalid() == before + 1


def test_the_aws_page_lists_every_aws_operation_as_supported_or_not(app: Flask) -> None:
    # docs/aws-kms.md's two tables: each operation kms serves in the first, every other
    # operation of AWS KMS's API in the second, none in both and none left out.
    served = {
        rule.rule[len(PREFIX) + 1 :]
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(PREFIX + "/")
    }
    page = (Path(__file__).parents[2] / "docs" / "aws-kms.md").read_text("utf-8")
    supported_table = page.split("## Operations", 1)[1].split("Not supported", 1)[0]
    unsupported_table = page.split("Not supported", 1)[1].split("## Errors", 1)[0]

    def named(table: str) -> set[str]:
        first_cells = re.findall(r"^\| ([^|]+) \|", table, flags=re.MULTILINE)
        words = {w for cell in first_cells for w in re.findall(r"[A-Z][A-Za-z]+", cell)}
        return words & AWS_OPERATIONS

    assert named(supported_table) == served
    unsupported = named(unsupported_table)
    custom_key_stores = {name for name in AWS_OPERATIONS if "CustomKeyStore" in name}
    assert unsupported | custom_key_stores == AWS_OPERATIONS - served
    assert not unsupported & served
