"""What a view needs from the app: the service, the request body limit, and how to answer."""

from __future__ import annotations

from typing import Any, cast

from flask import Request, Response, current_app, g, jsonify, request
from flask.ctx import _AppCtxGlobals
from werkzeug.local import LocalProxy

from kms.api.payload import read_json_object, read_query
from kms.errors import FencedCiphertext, InvalidCiphertext, KMSError
from kms.service.keys import UNKNOWN_ALGORITHM, KMSService

SERVICE = "kms.service"
MAX_BODY_BYTES = "KMS_MAX_BODY_BYTES"
#: ``request`` typed as what it is, a proxy: ``request_proxy._get_current_object()`` is the
#: request behind it, for the hooks that read it many times (each access through the proxy is a
#: context lookup of its own).
request_proxy = cast("LocalProxy[Request]", request)
#: ``g`` likewise: ``g_proxy._get_current_object()`` is the request's ``g``, which the hooks
#: that read several of its entries look up once and pass to the ``answered_*`` readers below.
g_proxy = cast("LocalProxy[_AppCtxGlobals]", g)


def service() -> KMSService:
    return current_app.extensions[SERVICE]


def json_body() -> dict[str, Any]:
    """The request's JSON object, read once per request.

    The request hooks read it to find the key a request names; the view then gets the same
    object, or the same error, without reading the stream a second time.
    """
    state = g_proxy._get_current_object()  # one context lookup, not one per access
    body = state.get("kms_body")
    if body is None:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            body = read_json_object(request_proxy._get_current_object(), app.config[MAX_BODY_BYTES])
        except KMSError as error:
            body = error
        state.kms_body = body
    if isinstance(body, KMSError):
        raise body
    return body


def query_args() -> dict[str, str]:
    return read_query(request)


def answer(document: Any, status: int = 200) -> Response:
    """``document`` as the JSON answer.

    The ``version`` it names (an integer at the top level of an object) is noted for the audit
    line (``answered_version``), which therefore never parses the answer back.
    """
    version = document.get("version") if isinstance(document, dict) else None
    g_proxy._get_current_object().kms_answered_version = (
        version if isinstance(version, int) and not isinstance(version, bool) else None
    )
    response = jsonify(document)
    response.status_code = status
    return response


def crypto_answer(result: Any, document: Any) -> Response:
    """``answer``, noting the algorithm of the key ``result`` (a service result) came from, for
    the metrics: they need not read the key a second time."""
    note_algorithm(result.algorithm)
    return answer(document)


def note_algorithm(algorithm: str) -> None:
    g_proxy._get_current_object().kms_algorithm = algorithm


def note_rows_examined(count: int) -> None:
    """A key listing's rows read and checked, for the metrics."""
    g.kms_rows_examined = count


def answered_rows_examined(state: _AppCtxGlobals | None = None) -> int:
    """The rows a listing examined; ``state``, when given, is the request's ``g`` (each of the
    ``answered_*`` readers takes it, so that a hook reading several makes one context lookup)."""
    return (g if state is None else state).get("kms_rows_examined", 0)


def answered_algorithm(state: _AppCtxGlobals | None = None) -> str:
    return (g if state is None else state).get("kms_algorithm", UNKNOWN_ALGORITHM)


def answered_version(state: _AppCtxGlobals | None = None) -> int | None:
    """The version the view's answer named, if it answered through ``answer``."""
    return (g if state is None else state).get("kms_answered_version")


def note_refused_decryptions(errors: list[KMSError]) -> None:
    """The decryptions a request was refused (a single call's error, a batch's item errors),
    for the audit line and the metrics.

    The client gets ``invalid ciphertext`` for each, whatever the cause; the operator is told
    which it was: a ciphertext that authenticated but was made by a fenced version (its version
    noted), or one that did not authenticate.
    """
    state = g._get_current_object()
    for error in errors:
        if isinstance(error, FencedCiphertext):
            state.kms_fenced_versions = [*state.get("kms_fenced_versions", ()), error.version]
        elif isinstance(error, InvalidCiphertext):
            state.kms_invalid_ciphertexts = state.get("kms_invalid_ciphertexts", 0) + 1


def answered_fenced_versions(state: _AppCtxGlobals | None = None) -> list[int]:
    """The version of each fenced ciphertext the request was refused, in order."""
    return (g if state is None else state).get("kms_fenced_versions", [])


def answered_invalid_ciphertexts(state: _AppCtxGlobals | None = None) -> int:
    """How many ciphertexts of the request did not authenticate (or did not parse)."""
    return (g if state is None else state).get("kms_invalid_ciphertexts", 0)
