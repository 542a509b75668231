"""The one place where exceptions become HTTP responses.

Every error body has one shape: ``{"error": "<safe public message>"}``. Domain exceptions map to
their status below; marshmallow's ValidationError is 400 with the field messages; Werkzeug's HTTP
errors keep their status; anything else is logged with the request id and answered 500
``{"error": "internal error"}``.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import RequestRedirect

from kms import errors
from kms.api.context import note_refused_decryptions
from kms.api.payload import discard_unread_body

log = logging.getLogger("kms.api")

# Most specific first: the first matching class decides.
STATUS_BY_ERROR: tuple[tuple[type[errors.KMSError], int], ...] = (
    (errors.UnsupportedMediaType, 415),
    (errors.InvalidRequest, 400),
    (errors.InvalidCiphertext, 400),
    (errors.KeyNotFound, 404),
    (errors.KeyExists, 409),
    (errors.KeyChanged, 409),
    (errors.KeyDisabled, 409),
    (errors.KeyPendingDeletion, 409),
    (errors.KeyStateConflict, 409),
    (errors.TooManyVersions, 409),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.PayloadTooLarge, 413),
    (errors.StoreUnavailable, 503),
    (errors.ListingTimedOut, 503),
    (errors.RolledBack, 503),
    (errors.AuditUnavailable, 503),
    (errors.NotReady, 503),
    (errors.RateLimited, 429),
)


def status_for(error: errors.KMSError) -> int:
    for error_class, status in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return status
    return 500


def batch_item_error(error: errors.KMSError) -> dict[str, str]:
    """The result of a batch item that failed: the body the single call would have answered.

    Only client errors stay with their item (the service lets a server fault fail the whole
    batch); should another reach here, it shows as the single call's "internal error".
    """
    return {"error": error.public_message if status_for(error) < 500 else "internal error"}


def error_response(message: str, status: int) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.before_request
    def refuse_redirects() -> None:
        # Flask answers a routing redirect itself, bypassing every error handler; whatever rule
        # would still produce one (the URL map merges no slashes), the client gets a JSON 404.
        if isinstance(request.routing_exception, RequestRedirect):
            request.routing_exception = NotFound()

    @app.errorhandler(errors.KMSError)
    def handle_kms_error(error: errors.KMSError) -> Response:
        note_refused_decryptions([error])
        status = status_for(error)
        if status >= 500:
            cause = error.__cause__
            log.error(
                "request %s failed: %s%s",
                g.get("request_id", "-"),
                type(error).__name__,
                f" ({type(cause).__name__}: {cause})" if cause is not None else "",
            )
            if status == 500:
                return error_response("internal error", 500)
        response = error_response(error.public_message, status)
        if isinstance(error, errors.PayloadTooLarge):
            discard_unread_body(response, request)
        if isinstance(error, errors.RateLimited):
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    @app.errorhandler(ValidationError)
    def handle_validation_error(error: ValidationError) -> Response:
        return error_response(_describe(error.messages), 400)

    @app.errorhandler(HTTPException)
    def handle_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        return error_response((error.name or "error").lower(), status)

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception) -> Response:
        log.exception("request %s failed unexpectedly", g.get("request_id", "-"))
        return error_response("internal error", 500)


def describe_validation_error(error: ValidationError) -> str:
    return _describe(error.messages)


def _describe(messages: object, prefix: str = "") -> str:
    """Flatten marshmallow's nested messages into one line: ``field: message; other: ...``."""
    if isinstance(messages, dict):
        parts = [
            _describe(value, f"{prefix}.{key}" if prefix else str(key))
            for key, value in sorted(messages.items(), key=lambda item: str(item[0]))
        ]
        return "; ".join(parts)
    if isinstance(messages, list):
        text = " ".join(str(message) for message in messages)
        return f"{prefix}: {text}" if prefix else text
    return f"{prefix}: {messages}" if prefix else str(messages)
