"""The audit hooks' arrival side (kms.api.audit), through the app's test client with the audit
log on: a request that names no route, or a health check, writes no arrival line and is answered
as without the log; and the changes a request records do not outlive it."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Flask

from kms.app import create_app
from kms.service.keyring import RootKeyring
from kms.service.keys import RECORDED_CHANGES
from kms.settings import Settings
from tests.helpers.tls import client_as


def audited_app(initialised: Settings, keyring: RootKeyring, tmp_path: Path) -> Flask:
    settings = initialised.with_overrides(audit_path=tmp_path / "audit.log")
    return create_app(settings, keyring=keyring)


def arrival_lines(tmp_path: Path) -> list[dict[str, object]]:
    lines = (tmp_path / "audit.log").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["type"] == "request"]


def test_no_route_and_health_checks_write_no_arrival_line(
    initialised: Settings, keyring: RootKeyring, tmp_path: Path
) -> None:
    client = client_as(audited_app(initialised, keyring, tmp_path))
    missing = client.get("/v1/kms/nowhere")
    assert (missing.status_code, missing.get_json()) == (404, {"error": "not found"})
    assert client.get("/healthz").status_code == 200
    # A change writes its arrival line (a use of a key or a read writes one line, after it).
    assert client.post("/v1/kms/keys", json={"key_id": "arrived"}).status_code == 201
    assert [record["path"] for record in arrival_lines(tmp_path)] == ["/v1/kms/keys"]


def test_the_changes_a_request_records_do_not_outlive_it(
    initialised: Settings, keyring: RootKeyring, tmp_path: Path
) -> None:
    """A key change is noted for the request's audit line only: once answered, a change made
    outside any request (a `kms` command, the rotation of due keys) is noted nowhere."""
    client = client_as(audited_app(initialised, keyring, tmp_path))
    assert client.post("/v1/kms/keys", json={"key_id": "k"}).status_code == 201
    assert RECORDED_CHANGES.get() is None
