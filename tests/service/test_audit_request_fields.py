"""What the audit hooks (kms.api.audit) write about a request, through the app's test client with
the audit log on: a batch's item count (never for a single call), an AWS alias change's alias
name (never for another request), and a duration measured from
the request's arrival (docs/operations.md, "The audit log")."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from flask.testing import FlaskClient


def audit_lines(audit_path: Path, request_id: str) -> list[dict[str, object]]:
    lines = audit_path.read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record.get("request_id") == request_id]


def test_a_batch_s_lines_carry_its_item_count_and_a_single_call_s_none(
    audited_client: FlaskClient, audit_path: Path
) -> None:
    assert audited_client.post("/v1/kms/keys", json={"key_id": "k"}).status_code == 201
    item = {"plaintext": base64.b64encode(b"x").decode("ascii")}
    batch = audited_client.post("/v1/kms/encrypt", json={"key_id": "k", "batch": [item, item]})
    single = audited_client.post("/v1/kms/encrypt", json={"key_id": "k", **item})
    assert batch.status_code == single.status_code == 200, (batch.get_json(), single.get_json())
    batch_lines = audit_lines(audit_path, batch.headers["X-Request-Id"])
    # A use of a key is one line, written after it (kms.api.operations.CHANGES_NOTHING).
    assert [(r["type"], r.get("item_count")) for r in batch_lines] == [("response", 2)]
    single_lines = audit_lines(audit_path, single.headers["X-Request-Id"])
    assert [r["type"] for r in single_lines] == ["response"]
    assert all("item_count" not in record for record in single_lines)


def test_an_aws_alias_change_s_lines_name_the_alias_and_other_lines_none(
    audited_client: FlaskClient, audit_path: Path
) -> None:
    created = audited_client.post("/v1/kms/keys", json={"key_id": "k"})
    assert created.status_code == 201
    aliased = audited_client.post(
        "/v1/aws-kms/CreateAlias",
        data=json.dumps({"AliasName": "alias/orders", "TargetKeyId": "k"}),
        headers={"Content-Type": "application/x-amz-json-1.1"},
    )
    assert aliased.status_code == 200, aliased.data
    alias_lines = audit_lines(audit_path, aliased.headers["X-Request-Id"])
    assert [(r["type"], r.get("alias")) for r in alias_lines] == [
        ("request", "alias/orders"),
        ("response", "alias/orders"),
    ]
    assert all("alias" not in r for r in audit_lines(audit_path, created.headers["X-Request-Id"]))


def test_an_answer_s_duration_is_the_time_it_took_at_most(
    audited_client: FlaskClient, audit_path: Path
) -> None:
    """`duration_ms` counts from the request's arrival to its answer: never negative, and never
    more than the test saw pass around the whole call (a bound, not a speed check)."""
    started = time.perf_counter()
    response = audited_client.get("/v1/kms/keys")
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200
    lines = audit_lines(audit_path, response.headers["X-Request-Id"])
    (answer,) = [record for record in lines if record["type"] == "response"]
    assert isinstance(answer["duration_ms"], float | int)
    assert 0 <= answer["duration_ms"] <= elapsed_ms + 0.001  # rounded to 3 places
