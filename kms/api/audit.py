"""Audit every request: one line when it arrives, before anything is done, one when answered.

A line records who asked (the identity as the policy sees it), what (operation, key id, key
version), and the outcome (status, duration); never a plaintext, ciphertext, signature, MAC,
context value or key material: nothing from the body except the key id and a batch's item count.
If the arrival line cannot be written the request is refused with 503 and nothing is done
(no audit, no service). Denied and malformed requests are audited like any other.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from kms.api.context import answered_version
from kms.api.operations import current_target
from kms.audit import AuditLog, utc_timestamp
from kms.errors import AuditUnavailable

AUDIT_LOG = "kms.audit_log"
#: Longer client-supplied strings (a hostile key id or path) are cut to this in the log.
MAX_FIELD_CHARS = 256
log = logging.getLogger("kms")


def register_audit(app: Flask, audit_log: AuditLog | None) -> None:
    if audit_log is None:
        return
    app.extensions[AUDIT_LOG] = audit_log

    @app.before_request
    def audit_arrival() -> None:
        try:
            audit_log.append(_record("request"))
        except OSError as error:
            raise AuditUnavailable() from error

    @app.after_request
    def audit_answer(response: Response) -> Response:
        record = _record("response")
        # The version the answer named, as the view noted it: the body is not parsed back.
        record["key_version"] = answered_version() if response.status_code < 400 else None
        record["status"] = response.status_code
        record["duration_ms"] = round((time.perf_counter() - g.kms_started) * 1000, 3)
        try:
            audit_log.append(record)
        except OSError as error:
            # The request has been served; all that is left is to say so where an operator looks.
            log.error("request %s: cannot write its audit line: %s", g.request_id, error)
        return response


def _record(kind: str) -> dict[str, Any]:
    target = current_target()
    record: dict[str, Any] = {
        "time": utc_timestamp(),
        "type": kind,
        "request_id": g.get("request_id"),
        "identity": g.get("identity"),
        "operation": g.get("kms_operation_name"),
        "key_id": _cut(target.key_id),
        "method": request.method,
        "path": _cut(request.path),
    }
    if target.item_count is not None:
        record["item_count"] = target.item_count
    return record


def _cut(value: str | None) -> str | None:
    return value if value is None or len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS]
