"""Audit every request that may do work, before its answer is sent; a summary line for the
requests that did none.

A line records who asked (the identity as the policy sees it), what (operation, key id, key
version), and the outcome (status, duration); never a plaintext, ciphertext, signature, MAC,
context value or key material: nothing from the body except the key id and a batch's item count.

How many lines a request gets depends on whether its operation can change what is stored about a
key (``kms.api.operations.CHANGES_NOTHING``):

- **A change** (create, update, enable, disable, rotate, recreate, trim, schedule or cancel
  deletion, aliases, anything not in ``CHANGES_NOTHING``): a ``request`` line once it is allowed,
  before anything is done, and a ``response`` line when answered. If the ``request`` line cannot
  be written the request is refused with 503 and nothing is done; so a change is never made
  without a line that says it was asked for, even if the process dies before it answers.
- **Everything else** (encrypt, decrypt, sign, verify, data keys, rewrap, MAC, random, hash, key
  reads and listings, metrics): one ``response`` line, holding the request's fields and the
  outcome, written after the view has run and before the answer leaves. If it cannot be written
  the client gets the 503 instead of the answer: no result leaves unaudited. Such a request
  changes nothing a line must prove (a version's use counters, or the note of a refused use of a
  key pending deletion, are bookkeeping), so a process that dies between the view and the line
  loses no record of a change, and its answer was never sent.

The line that names the request is written after the rate limit and the policy have let it
through. A request refused before that point (no usable certificate name 401, no
such route 404/405, throttled 429, forbidden 403), a change refused because its ``request`` line
could not be written (503), and a health check (``/healthz``, ``/readyz``: no policy, no key) do
nothing, so they are not written one by one: each worker counts them per
identity, by status and by operation, and writes one ``summary`` line per identity every
``audit.summary_seconds`` (and when it stops). The audit bytes a client can cause without being
allowed anything are then bounded by time, not by its request rate::

    {"time":...,"type":"summary","identity":"stranger","since":...,"requests":5000,
     "statuses":{"403":4990,"429":10},"operations":{"encrypt":5000},"prev_hash":...}

A summary that cannot be written (a full disk) is kept and added to the next one.

A decryption refused (a single call's, or a batch's items) is answered ``invalid ciphertext``
whatever its cause; its answer line tells the operator which it was: ``fenced_ciphertexts`` (how
many authenticated but were made by a version below ``min_decryption_version``) and
``fenced_versions`` (those versions), ``invalid_ciphertexts`` (how many did not authenticate).

The answer to a request that changed a key (create, update, enable, disable, rotate, recreate,
trim, schedule or cancel deletion, destroy) records the key's new ``key_generation``, the keystore
epoch the change raised (kms.service.keys.generations): ``kms check --audit`` compares the
database with the newest the trail records. An alias change (AWS KMS's CreateAlias, UpdateAlias,
DeleteAlias) names the alias in ``alias`` and, in ``key_id``, the key it is made to name (or, for
a delete, named); it changes no key row, so its answer records no ``key_generation``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response

from kms.api.context import (
    answered_fenced_versions,
    answered_invalid_ciphertexts,
    answered_version,
    g_proxy,
    request_proxy,
)
from kms.api.operations import CHANGES_NOTHING, Target, declared_operation
from kms.audit import AuditLog, utc_timestamp
from kms.errors import AuditUnavailable
from kms.service.keys import RECORDED_CHANGES

AUDIT_LOG = "kms.audit_log"
AUDIT_SUMMARY = "kms.audit_summary"
#: Longer client-supplied strings (a hostile key id or path) are cut to this in the log.
MAX_FIELD_CHARS = 256
#: Identities a worker counts at once; one more writes the summaries out early, so memory stays
#: bounded however many certificates take part.
MAX_SUMMARY_IDENTITIES = 1000
#: The operation recorded for a request that names none (no route matched).
NO_OPERATION = "-"
NO_TARGET = Target(key_id=None)
#: The headers of an answer that describe its body: not carried onto the 503 that replaces it.
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})
log = logging.getLogger("kms")


def register_audit(app: Flask, audit_log: AuditLog | None, summary_seconds: int) -> None:
    """Register the audit hooks; call after the rate limit and the policy are registered, so
    that only a request they let through writes its arrival line."""
    if audit_log is None:
        return
    app.extensions[AUDIT_LOG] = audit_log
    summary = app.extensions[AUDIT_SUMMARY] = Summaries(audit_log, summary_seconds)

    @app.before_request
    def audit_arrival() -> None:
        declared = declared_operation(app, request_proxy._get_current_object().endpoint)
        if declared is None or not declared.needs_policy:
            return  # no route, or a health check: counted in the summary when answered
        state = g_proxy._get_current_object()  # one context lookup, not one per access
        # Who asked for what is settled by now (identity runs first): the answer's line reuses it.
        fields = _request_fields(state)
        if fields["operation"] not in CHANGES_NOTHING:
            try:
                audit_log.append(_record("request", fields))
            except OSError as error:
                # Refused, nothing done: counted in the summary like the others refused.
                raise AuditUnavailable() from error
        # Otherwise its one line is written with the answer, before it is sent (audit_answer).
        state.kms_audit_fields = fields
        changes: list[tuple[str, int]] = []
        state.kms_changes = changes
        state.kms_changes_token = RECORDED_CHANGES.set(changes)

    @app.after_request
    def audit_answer(response: Response) -> Response:
        state = g_proxy._get_current_object()
        fields = state.get("kms_audit_fields")
        if fields is None:
            # Refused before its arrival line, or a health check: nothing was done.
            summary.count(
                _cut(state.get("identity")) or "-",
                state.get("kms_operation_name") or NO_OPERATION,
                response.status_code,
            )
            return response
        record = _record("response", fields)
        # The version the answer named, as the view noted it: the body is not parsed back.
        record["key_version"] = answered_version(state) if response.status_code < 400 else None
        changes = state.get("kms_changes")
        if changes:
            record["key_generation"] = max(generation for _, generation in changes)
        fenced = answered_fenced_versions(state)
        if fenced:
            record["fenced_ciphertexts"] = len(fenced)
            record["fenced_versions"] = sorted(set(fenced))
        invalid = answered_invalid_ciphertexts(state)
        if invalid:
            record["invalid_ciphertexts"] = invalid
        record["status"] = response.status_code
        record["duration_ms"] = round((time.perf_counter() - state.kms_started) * 1000, 3)
        try:
            audit_log.append(record)
        except OSError as error:
            if fields["operation"] in CHANGES_NOTHING:
                # This is the request's only line: its answer must not leave unaudited.
                return _refused(app, response, error)
            # A change, whose request line is written: it has been made, all that is left is
            # to say so where an operator looks.
            log.error("request %s: cannot write its audit line: %s", state.request_id, error)
        return response

    @app.teardown_request
    def forget_changes(_error: BaseException | None) -> None:
        token = g_proxy._get_current_object().pop("kms_changes_token", None)
        if token is not None:
            try:
                RECORDED_CHANGES.reset(token)
            except ValueError:  # set in another context: make sure nothing outlives the request
                RECORDED_CHANGES.set(None)


@dataclass
class _Tally:
    since: str
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)

    def add(self, other: _Tally) -> None:
        self.since = min(self.since, other.since)
        self.requests += other.requests
        self.statuses.update(other.statuses)
        self.operations.update(other.operations)


class Summaries:
    """Per-identity counts of the requests that did no work, written out every ``seconds`` by
    a thread of this process (started on the first count, so after gunicorn's fork)."""

    def __init__(self, audit_log: AuditLog, seconds: int) -> None:
        self._audit_log = audit_log
        self._seconds = seconds
        self._lock = threading.Lock()
        self._tallies: dict[str, _Tally] = {}
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self, identity: str, operation: str, status: int) -> None:
        with self._lock:
            tally = self._tallies.get(identity)
            if tally is None:
                if len(self._tallies) >= MAX_SUMMARY_IDENTITIES:
                    self._flush_locked()
                tally = self._tallies[identity] = _Tally(since=utc_timestamp())
            tally.requests += 1
            tally.statuses[str(status)] += 1
            tally.operations[operation] += 1
            if self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="kms-audit-summary", daemon=True
                )
                self._thread.start()

    def flush(self) -> None:
        """Write one summary line per identity counted since the last flush."""
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        """Stop the thread and write what is counted (a worker that stops)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stopped.wait(self._seconds):
            self.flush()

    def _flush_locked(self) -> None:
        tallies, self._tallies = self._tallies, {}
        for position, (identity, tally) in enumerate(tallies.items()):
            try:
                self._audit_log.append(_summary_record(identity, tally))
            except OSError as error:
                log.error("cannot write the audit summary lines, kept for the next: %s", error)
                for kept, unwritten in list(tallies.items())[position:]:
                    self._tallies.setdefault(kept, _Tally(since=unwritten.since)).add(unwritten)
                return


def _summary_record(identity: str, tally: _Tally) -> dict[str, Any]:
    return {
        "time": utc_timestamp(),
        "type": "summary",
        "identity": identity,
        "since": tally.since,
        "requests": tally.requests,
        "statuses": dict(sorted(tally.statuses.items())),
        "operations": dict(sorted(tally.operations.items())),
    }


def _record(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"time": utc_timestamp(), "type": kind, **fields}


def _refused(app: Flask, answered: Response, cause: OSError) -> Response:
    """The 503 a request gets instead of its answer when its only audit line cannot be written,
    in the shape of the route's API (kms, Vault or AWS KMS: their error handlers make it)."""
    error = AuditUnavailable()
    error.__cause__ = cause
    refusal = app.make_response(app.handle_user_exception(error))
    # What the route's own hooks added (AWS KMS's x-amzn-RequestId), not what the body set.
    for name, value in answered.headers.items():
        if name.lower() not in _BODY_HEADERS:
            refusal.headers[name] = value
    # Its close callbacks (a 413's reading of the unread body) run once the 503 is sent.
    refusal.call_on_close(answered.close)
    return refusal


def _request_fields(state: Any) -> dict[str, Any]:
    """Who asked for what; ``state`` is the request's ``g``."""
    current = request_proxy._get_current_object()
    target = state.get("kms_target") or NO_TARGET
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
    if target.alias_name is not None:
        fields["alias"] = _cut(target.alias_name)
    return fields


def _cut(value: str | None) -> str | None:
    return value if value is None or len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS]
