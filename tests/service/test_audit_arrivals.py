"""The audit hooks' arrival side (kms.api.audit), through the app's test client with the audit
log on: a request that names no route, or a health check, writes no arrival line and is answered
as without the log; and the changes a request records do not outlive it."""

from __future__ import annotations

import json
from pathlib import Path

from flask.testing import FlaskClient

from kms.service.keys import RECORDED_CHANGES


def arrival_lines(audit_path: Path) -> list[dict[str, object]]:
    lines = audit_path.read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["type"] == "request"]


def test_no_route_and_health_checks_write_no_arrival_line(
    audited_client: FlaskClient, audit_path: Path
) -> None:
    missing = audited_client.get("/v1/kms/nowhere")
    assert (missing.status_code, missing.get_json()) == (404, {"error": "not found"})
    assert audited_client.get("/healthz").status_code == 200
    # A change writes its arrival line (a use of a key or a read writes one line, after it).
    assert audited_client.post("/v1/kms/keys", json={"key_id": "arrived"}).status_code == 201
    assert [record["path"] for record in arrival_lines(audit_path)] == ["/v1/kms/keys"]


def test_the_changes_a_request_records_do_not_outlive_it(audited_client: FlaskClient) -> None:
    """A key change is noted for the request's audit line only: once answered, a change made
    outside any request (a `kms` command, the rotation of due keys) is noted nowhere."""
    assert audited_client.post("/v1/kms/keys", json={"key_id": "k"}).status_code == 201
    assert RECORDED_CHANGES.get() is None
