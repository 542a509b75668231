"""The cross-cutting hooks on the app itself: every route declares an operation, the policy file
is checked, identities are found, and the audit chain detects what it must."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from kms.api.context import SERVICE
from kms.api.operations import KNOWN_OPERATIONS, declared_operation
from kms.api.policy import load_policy
from kms.app import create_app
from kms.audit import GENESIS_HASH, AuditLog
from kms.audit_verify import verify_files
from kms.errors import ConfigurationError
from kms.server.identity import Caller
from kms.service.keyring import RootKeyring
from kms.settings import Settings
from tests.helpers.audit import KEY
from tests.helpers.tls import FakeTLSSocket

POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
  "spiffe://prod/billing":
    - operations: ["encrypt", "keys:*"]
      keys: ["billing-*"]
    - operations: ["decrypt"]
      keys: ["shared"]
"""


@pytest.fixture
def app(initialised: Settings, keyring: RootKeyring, tmp_path: Path) -> Flask:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    settings = initialised.with_overrides(policy_file=policy, audit_path=tmp_path / "audit.log")
    return create_app(settings, keyring=keyring)


def test_every_route_declares_an_operation(app: Flask) -> None:
    undeclared = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        declared = declared_operation(app, rule.endpoint)
        if declared is None:
            undeclared.append(rule.rule)
        elif declared.needs_policy:
            assert declared.name in KNOWN_OPERATIONS, rule.rule
    assert undeclared == []
    # The check sees an endpoint that forgot: a new route without @operation.
    app.add_url_rule("/v1/kms/forgotten", "forgotten", lambda: "")
    assert declared_operation(app, "forgotten") is None


def test_health_checks_need_no_rule_and_everything_else_does(app: Flask) -> None:
    free = {
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not declared_operation(app, rule.endpoint).needs_policy
    }
    assert free == {"/healthz", "/readyz", "/v1/kms/openapi.json"}


def test_a_caller_is_known_by_its_cn_or_any_dns_or_uri_san(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    policy = load_policy(path)
    billing = Caller(("billing-svc",), ("DNS:billing.internal", "URI:spiffe://prod/billing"))
    assert policy.identity_of(billing) == "spiffe://prod/billing"
    assert policy.identity_of(Caller(("orchestrator",), ("DNS:x",))) == "orchestrator"
    assert policy.identity_of(Caller((), ("IP Address:10.0.0.1", "DNS:orchestrator"))) == (
        "orchestrator"
    )
    # A name no entry lists is recorded with its type.
    assert policy.identity_of(Caller((), ("IP Address:10.0.0.1", "DNS:nobody"))) == "dns:nobody"
    assert policy.identity_of(Caller((), ())) == "-"
    allows = policy.allows
    assert allows("spiffe://prod/billing", "encrypt", "billing-1")
    assert allows("spiffe://prod/billing", "keys:rotate", "billing-1")  # an operation glob
    assert allows("spiffe://prod/billing", "decrypt", "shared")
    assert not allows("spiffe://prod/billing", "decrypt", "billing-1")
    assert not allows("spiffe://prod/billing", "encrypt", "Billing-1")  # globs are case-sensitive
    assert not allows("spiffe://prod/billing", "sign", "billing-1")
    assert not allows("nobody", "keys:read", None)
    assert allows("orchestrator", "metrics", None)


def test_a_one_character_identity_and_key_glob_are_a_valid_rule(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("clients:\n  x:\n    - operations: [encrypt]\n      keys: [k]\n", "utf-8")
    assert load_policy(path).allows("x", "encrypt", "k")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("clients:\n  x:\n    - operations: []\n      keys: ['*']\n", "operations"),
        (
            "clients:\n  x:\n    - operations: [encrypt]\n      keys: ['*']\n      extra: 1\n",
            "extra",
        ),
        ("clients:\n  x:\n    - keys: ['*']\n", "operations"),
        ("clients:\n  x:\n    - operations: [encrypt]\n", "keys"),
        ("clients:\n  x: []\n", "clients"),
        ("other: 1\n", "clients"),
        ("clients:\n  x:\n    - operations: ['nothing:*']\n      keys: ['*']\n", "nothing:*"),
    ],
)
def test_an_invalid_policy_file_names_the_problem(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigurationError) as raised:
        load_policy(path)
    message = raised.value.public_message
    assert message.startswith(f"authorization.policy_file {path}: ") and problem in message
    assert "\n" not in message


def test_a_missing_policy_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read it: No such file"):
        load_policy(tmp_path / "absent.yaml")


def test_the_chain_starts_at_genesis_and_links_each_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, KEY)
    for index in range(5):
        log.append({"n": index})
    # A second writer (another worker) continues the same chain.
    AuditLog(path, KEY).append({"n": 5})
    log.append({"n": 6})
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[0])["prev_hash"] == GENESIS_HASH
    assert json.loads(lines[0])["type"] == "file"
    assert [json.loads(line)["n"] for line in lines[1:]] == list(range(7))
    result = verify_files([path], KEY)
    assert result.files[0].lines == 8 and result.failure is None
    path.write_bytes(path.read_bytes() + b'{"n": 7')
    result = verify_files([path], KEY)
    assert result.failure is not None
    assert (result.files[0].lines, result.failure.line) == (8, 9)
    inserted = tmp_path / "inserted.log"
    inserted.write_bytes(b"\n".join([lines[0], lines[1], lines[1], *lines[2:]]) + b"\n")
    failure = verify_files([inserted], KEY).failure
    assert failure is not None and failure.line == 3


def test_readyz_says_when_the_master_key_is_not_loaded(app: Flask, keyring: RootKeyring) -> None:
    client = app.test_client()
    client.environ_base["gunicorn.socket"] = FakeTLSSocket("stranger", alt_names=())
    assert client.get("/readyz").get_json() == {
        "status": "ready",
        "master_key_backend": "passphrase",
    }  # no policy rule needed
    assert client.get("/v1/kms/keys").status_code == 403
    keyring.close()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"error": "not ready: master key not loaded"}
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_a_hostile_key_id_is_cut_short_in_the_audit_log(app: Flask, tmp_path: Path) -> None:
    client = app.test_client()
    client.environ_base["gunicorn.socket"] = FakeTLSSocket("orchestrator", alt_names=())
    response = client.post("/v1/kms/encrypt", json={"key_id": "k" * 5000, "plaintext": "eA=="})
    assert response.status_code == 400
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [record["type"] for record in records] == ["file", "response"]  # one: a use
    (record,) = records[1:]
    assert record["key_id"] == "k" * 256
    assert record["status"] == 400
    assert response.headers["X-Request-Id"] == record["request_id"]
    response = client.post("/v1/kms/keys", json={"key_id": "k" * 5000})
    assert response.status_code == 400
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [record["type"] for record in records[2:]] == ["request", "response"]  # a change
    assert all(record["key_id"] == "k" * 256 for record in records[2:])


def test_the_answer_line_says_how_long_the_request_took(app: Flask, tmp_path: Path) -> None:
    """README, audit log: the answer's line holds the request's duration in milliseconds."""
    client = app.test_client()
    client.environ_base["gunicorn.socket"] = FakeTLSSocket("orchestrator", alt_names=())
    started = time.perf_counter()
    assert client.get("/v1/kms/keys").status_code == 200
    elapsed_ms = (time.perf_counter() - started) * 1000
    answer = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert answer["type"] == "response"
    assert 0 <= answer["duration_ms"] <= elapsed_ms


def test_a_page_of_the_keys_a_caller_may_read_holds_no_more_than_the_limit(app: Flask) -> None:
    """The unreadable ``a-1`` takes a place in the first page of all keys, so the page is filled
    from a second one: still at most ``limit`` keys, in order."""
    admin, billing = app.test_client(), app.test_client()
    admin.environ_base["gunicorn.socket"] = FakeTLSSocket("orchestrator", alt_names=())
    billing.environ_base["gunicorn.socket"] = FakeTLSSocket(
        "billing-svc", alt_names=(("URI", "spiffe://prod/billing"),)
    )
    for key_id in ["a-1", "billing-1", "billing-2", "billing-3"]:
        assert admin.post("/v1/kms/keys", json={"key_id": key_id}).status_code == 201
    page = billing.get("/v1/kms/keys?limit=2")
    assert page.status_code == 200
    assert [key["key_id"] for key in page.get_json()] == ["billing-1", "billing-2"]


def test_an_unexpected_error_is_answered_500_and_logged_with_the_request_id(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Anything that is not a KMSError: 500 "internal error" to the client, the traceback and
    the request id in the log, and nothing else."""
    client = app.test_client()
    client.environ_base["gunicorn.socket"] = FakeTLSSocket("orchestrator", alt_names=())

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("a bug, with a detail no client may see")

    monkeypatch.setattr(app.extensions[SERVICE], "list_page", broken)
    with caplog.at_level("ERROR", logger="kms"):
        response = client.get("/v1/kms/keys")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error"}
    request_id = response.headers["X-Request-Id"]
    assert any(
        f"request {request_id} failed unexpectedly" in record.getMessage()
        and record.exc_info is not None
        for record in caplog.records
    )
