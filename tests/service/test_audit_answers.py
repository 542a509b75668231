"""The answer's audit line (``kms.api.audit.audit_answer``) where it can fail or be measured: a
change whose answer line cannot be written once it is made, a 413 replaced by the audit's 503,
and ``duration_ms``'s unit. In process, with Flask's test client; the audit file is sealed as an
operator seals it (no write bit, which kms honours even for root).

docs/operations.md, Audit log.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask, g
from flask.testing import FlaskClient

import kms.api.audit
from kms.api.context import SERVICE

REFUSAL = {"error": "audit log unavailable, request refused"}


def lines_of(audit_path: Path, request_id: str) -> list[dict[str, Any]]:
    records = map(json.loads, audit_path.read_bytes().splitlines())
    return [record for record in records if record.get("request_id") == request_id]


def test_a_change_whose_answer_line_cannot_be_written_stands_and_the_server_says_so(
    audited_app: Flask,
    audited_client: FlaskClient,
    audit_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The change was made after its ``request`` line was written: its answer is sent, and the
    missing ``response`` line is logged with the request's id, the one place an operator learns
    that the trail lacks the outcome of that request."""
    audited_client.get("/v1/kms/keys")  # the log and its first lines exist
    service = audited_app.extensions[SERVICE]
    create_key = service.create_key

    def create_then_seal(*args: Any, **kwargs: Any) -> Any:
        created = create_key(*args, **kwargs)
        os.chmod(audit_path, 0o444)  # the arrival line is written; the answer's line fails
        return created

    monkeypatch.setattr(service, "create_key", create_then_seal)
    with caplog.at_level(logging.ERROR, logger="kms"):
        response = audited_client.post("/v1/kms/keys", json={"key_id": "made"})
    os.chmod(audit_path, 0o600)
    monkeypatch.undo()

    assert response.status_code == 201, response.get_json()
    request_id = response.headers["X-Request-Id"]
    assert [line["type"] for line in lines_of(audit_path, request_id)] == ["request"]
    assert f"request {request_id}: cannot write its audit line: " in caplog.text
    assert audited_client.get("/v1/kms/keys/made").status_code == 200


def test_a_413_answered_with_the_audit_503_still_drains_the_unread_body(
    audited_client: FlaskClient, audit_path: Path
) -> None:
    """A body over the limit is refused 413 and, once the answer is sent, read and dropped, so
    that closing the connection does not reset it before the client sees the answer
    (kms.api.payload.discard_unread_body). When the 413's one audit line cannot be written the
    client gets the 503 instead: the body must still be drained after it."""
    audited_client.get("/v1/kms/keys")  # the log exists
    size = 2 * 1024 * 1024  # over the default 1 MiB limit, under what is drained afterwards
    body = b'{"key_id": "data", "plaintext": "' + b"A" * size + b'"}'
    for sealed in (False, True):
        if sealed:
            os.chmod(audit_path, 0o444)
        stream = io.BytesIO(body)
        response = audited_client.post(
            "/v1/kms/encrypt",
            input_stream=stream,
            content_type="application/json",
            headers={"Content-Length": str(len(body))},
        )
        assert response.status_code == (503 if sealed else 413)
        if sealed:
            assert response.get_json() == REFUSAL
        response.close()  # as the server does once the answer is written
        assert stream.tell() == len(body), sealed
    os.chmod(audit_path, 0o600)


def test_an_answer_s_duration_is_in_milliseconds_to_the_microsecond(
    audited_client: FlaskClient, audit_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``duration_ms`` (docs/operations.md): the time from the request's arrival to its answer,
    in milliseconds rounded to 3 places. The hook's clock is made to read 12.3456 ms after the
    arrival, so the value is exact rather than a race with the machine's load."""

    def perf_counter() -> float:
        return float(g.kms_started) + 0.0123456

    monkeypatch.setattr(kms.api.audit, "time", SimpleNamespace(perf_counter=perf_counter))
    plaintext = base64.b64encode(b"timed").decode()
    assert audited_client.post("/v1/kms/keys", json={"key_id": "data"}).status_code == 201
    response = audited_client.post(
        "/v1/kms/encrypt", json={"key_id": "data", "plaintext": plaintext}
    )
    assert response.status_code == 200
    (line,) = lines_of(audit_path, response.headers["X-Request-Id"])
    assert line["duration_ms"] == 12.346
