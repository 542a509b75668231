"""Audit every request: one line when it arrives, before anything is done, one when answered.

A line records who asked (the identity as the policy sees it), what (operation, key id, key
version), and the outcome (status, duration); never a plaintext, ciphertext, signature, MAC,
context value or key material: nothing from the body except the key id and a batch's item count.
If the arrival line cannot be written the request is refused with 503 and nothing is done
(no audit, no service). Denied and malformed requests are audited like any other.

The answer to a request that changed a key (create, update, enable, disable, rotate, recreate,
trim, schedule or cancel deletion, destroy) records the key's new ``key_generation``, the keystore
epoch the change raised (kms.service.keys.generations): ``kms check --audit`` compares the
database with the newest the trail records.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g

from kms.api.context import answered_version, request_proxy
from kms.api.operations import current_target
from kms.audit import AuditLog, utc_timestamp
from kms.errors import AuditUnavailable
from kms.service.keys import RECORDED_CHANGES

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
        # Who asked for what is settled by now (identity runs first): the answer's line reuses it.
        g.kms_audit_fields = fields = _request_fields()
        changes: list[tuple[str, int]] = []
        g.kms_changes = changes
        g.kms_changes_token = RECORDED_CHANGES.set(changes)
        try:
            audit_log.append(_record("request", fields))
        except OSError as error:
            raise AuditUnavailable() from error

    @app.after_request
    def audit_answer(response: Response) -> Response:
        # A request refused before its arrival line (no client certificate) has no fields yet.
        fields = g.get("kms_audit_fields")
        record = _record("response", _request_fields() if fields is None else fields)
        # The version the answer named, as the view noted it: the body is not parsed back.
        record["key_version"] = answered_version() if response.status_code < 400 else None
        changes = g.get("kms_changes")
        if changes:
            record["key_generation"] = max(generation for _, generation in changes)
        record["status"] = response.status_code
        record["duration_ms"] = round((time.perf_counter() - g.kms_started) * 1000, 3)
        try:
            audit_log.append(record)
        except OSError as error:
            # The request has been served; all that is left is to say so where an operator looks.
            log.error("request %s: cannot write its audit line: %s", g.request_id, error)
        return response

    @app.teardown_request
    def forget_changes(_error: BaseException | None) -> None:
        token = g.pop("kms_changes_token", None)
        if token is not None:
            try:
                RECORDED_CHANGES.reset(token)
            except ValueError:  # set in another context: make sure nothing outlives the request
                RECORDED_CHANGES.set(None)


def _record(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"time": utc_timestamp(), "type": kind, **fields}


def _request_fields() -> dict[str, Any]:
    # Looked up once: each access through a proxy is a context lookup of its own.
    state, current = g._get_current_object(), request_proxy._get_current_object()
    target = current_target()
    fields: dict[str, Any] = {
        "request_id": state.get("request_id"),
        "identity": state.get("identity"),
        "operation": state.get("kms_operation_name"),
        "key_id": _cut(target.key_id),
        "method": current.method,
        "path": _cut(current.path),
    }
    if target.item_count is not None:
        fields["item_count"] = target.item_count
    return fields


def _cut(value: str | None) -> str | None:
    return value if value is None or len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS]
