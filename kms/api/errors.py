"""The one place where exceptions become HTTP responses.

Every error body has one shape: ``{"error": "<safe public message>"}``. Domain exceptions map to
their status below; marshmallow's ValidationError is 400 with the field messages; Werkzeug's HTTP
errors keep their status; anything else is logged with the request id and answered 500
``{"error": "internal error"}``.

The AWS KMS blueprint (``kms.api.aws``) answers the same exceptions in AWS's JSON 1.1 shape,
``{"__type": "<AWS error code>", "message": "<safe public message>"}``, from the table
``AWS_CODE_BY_ERROR`` below (``register_aws_error_shape``).

The Vault Transit routes (``/v1/transit/``, kms.api.vault) answer errors as Vault does, from the
same exceptions: ``{"errors": ["<message>"]}`` (``{"errors": []}`` for a key that is not there
to read), Vault's statuses (a conflict of key state is 400 there, not 409) and, where a Vault
client may match on them, Vault's words (``VAULT_MESSAGES``, ``VAULT_KEY_NOT_FOUND``).
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Flask, Response, g, jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import RequestRedirect

from kms import errors
from kms.api.context import note_refused_decryptions
from kms.api.payload import discard_unread_body

log = logging.getLogger("kms.api")
VAULT_PREFIX = "/v1/transit/"
VAULT_TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"

# Most specific first: the first matching class decides.
STATUS_BY_ERROR: tuple[tuple[type[errors.KMSError], int], ...] = (
    (errors.UnsupportedMediaType, 415),
    (errors.InvalidRequest, 400),
    (errors.InvalidCiphertext, 400),
    (errors.IncorrectKey, 400),
    (errors.InvalidSignature, 400),
    (errors.InvalidMAC, 400),
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


#: Where the Vault routes say what Vault says: the first matching class decides.
VAULT_MESSAGES: tuple[tuple[type[errors.KMSError], int, str], ...] = (
    (errors.VersionBelowMinimum, 400, VAULT_TOO_OLD),
    (errors.Forbidden, 403, "permission denied"),
    (errors.RateLimited, 429, "rate limit quota exceeded"),
)
#: A key the request names does not exist: per Vault endpoint, its status and message (None:
#: Vault's empty 404, ``{"errors": []}``); ``{key}`` is the key's name. Other endpoints say
#: "encryption key not found", as Vault's encrypt, decrypt, rewrap, datakey and hmac do.
VAULT_KEY_NOT_FOUND: dict[str, tuple[int, str | None]] = {
    "vault.read_key": (404, None),
    "vault.list_keys": (404, None),
    "vault.export_key": (404, None),
    "vault.export_key_version": (404, None),
    "vault.backup_key": (404, None),
    "vault.delete_key": (400, "error deleting policy {key}: could not delete key; not found"),
    "vault.configure_key": (400, "no existing key named {key} could be found"),
    "vault.rotate_key": (400, "key not found"),
    "vault.trim_key": (400, "invalid key name"),
    "vault.sign": (400, "signing key not found"),
    "vault.sign_with_hash": (400, "signing key not found"),
    "vault.verify": (400, "signature verification key not found"),
    "vault.verify_with_hash": (400, "signature verification key not found"),
}


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
    if request.path.startswith(VAULT_PREFIX):
        return vault_error_response([message], status)
    response = jsonify(error=message)
    response.status_code = status
    return response


def vault_error_response(messages: list[str], status: int) -> Response:
    response = jsonify(errors=messages)
    response.status_code = status
    return response


def vault_error(error: errors.KMSError) -> tuple[int, str | None]:
    """A domain exception as a Vault route answers it: its status and message (None: none)."""
    status = status_for(error)
    if status >= 500:
        return status, error.public_message if status != 500 else "internal error"
    if isinstance(error, errors.KeyNotFound):
        endpoint = request.endpoint or ""
        status, message = VAULT_KEY_NOT_FOUND.get(endpoint, (400, "encryption key not found"))
        key = (request.view_args or {}).get("key_id", "")
        return status, None if message is None else message.format(key=key)
    for error_class, vault_status, message in VAULT_MESSAGES:
        if isinstance(error, error_class):
            return vault_status, message
    if isinstance(error, errors.DeletionNotAllowed) and request.endpoint == "vault.delete_key":
        key = (request.view_args or {}).get("key_id", "")
        return 400, f"error deleting policy {key}: deletion is not allowed for this key"
    if type(error) is errors.InvalidCiphertext and (
        error.public_message == errors.InvalidCiphertext.public_message
    ):
        # Whatever made a well-formed ciphertext fail (a wrong context, a changed byte, another
        # key's), Vault says only this.
        return 400, "cipher: message authentication failed"
    # Vault answers every other refusal of a valid request with 400 (kms's 409s among them).
    return (400 if status == 409 else status), error.public_message


def vault_item_error(error: errors.KMSError) -> str:
    """The ``error`` of a Vault batch item that failed."""
    _status, message = vault_error(error)
    return message or "internal error"


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
            _log_server_fault(error)
            if status == 500:
                return error_response("internal error", 500)
        if request.path.startswith(VAULT_PREFIX):
            vault_status, message = vault_error(error)
            response = vault_error_response([] if message is None else [message], vault_status)
        else:
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
        if request.path.startswith(VAULT_PREFIX) and status in VAULT_HTTP_MESSAGES:
            return vault_error_response([VAULT_HTTP_MESSAGES[status]], status)
        return error_response((error.name or "error").lower(), status)

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception) -> Response:
        log.exception("request %s failed unexpectedly", g.get("request_id", "-"))
        return error_response("internal error", 500)


def _log_server_fault(error: errors.KMSError) -> None:
    cause = error.__cause__
    log.error(
        "request %s failed: %s%s",
        g.get("request_id", "-"),
        type(error).__name__,
        f" ({type(cause).__name__}: {cause})" if cause is not None else "",
    )


# -- AWS KMS's shape, for the blueprint of kms.api.aws -----------------------------------------

AWS_JSON = "application/x-amz-json-1.1"
#: AWS's code for each domain exception, most specific first. A client error is status 400, as
#: AWS KMS answers them; a server fault is KMSInternalException with kms's own status (500 or
#: 503), which the AWS SDKs retry. ThrottlingException makes them back off and retry too.
AWS_CODE_BY_ERROR: tuple[tuple[type[errors.KMSError], str], ...] = (
    (errors.RateLimited, "ThrottlingException"),
    (errors.Unauthenticated, "AccessDeniedException"),
    (errors.Forbidden, "AccessDeniedException"),
    (errors.KeyNotFound, "NotFoundException"),
    (errors.KeyExists, "AlreadyExistsException"),
    (errors.KeyDisabled, "DisabledException"),
    (errors.KeyPendingDeletion, "KMSInvalidStateException"),
    (errors.KeyStateConflict, "KMSInvalidStateException"),
    (errors.IncorrectKey, "IncorrectKeyException"),
    (errors.InvalidCiphertext, "InvalidCiphertextException"),
    (errors.InvalidSignature, "KMSInvalidSignatureException"),
    (errors.InvalidMAC, "KMSInvalidMacException"),
    (errors.PurposeMismatch, "InvalidKeyUsageException"),
    (errors.TooManyVersions, "LimitExceededException"),
    (errors.InvalidAliasName, "InvalidAliasNameException"),
    (errors.InvalidRequest, "ValidationException"),
    (errors.PayloadTooLarge, "ValidationException"),
)
AWS_INTERNAL = "KMSInternalException"


def aws_error_response(code: str, message: str, status: int = 400) -> Response:
    """An AWS KMS error answer; needs no app context (the target router uses it too)."""
    body = json.dumps({"__type": code, "message": message})
    return Response(body, status=status, content_type=AWS_JSON)


def aws_code_for(error: errors.KMSError) -> tuple[str, int]:
    """The AWS error code and status of a domain exception."""
    status = status_for(error)
    if status >= 500:
        return AWS_INTERNAL, status
    for error_class, code in AWS_CODE_BY_ERROR:
        if isinstance(error, error_class):
            return code, 400
    return AWS_INTERNAL, 500


def register_aws_error_shape(blueprint: Blueprint) -> None:
    """Answer every error of ``blueprint``'s requests in AWS KMS's shape: the hooks' refusals
    (policy, rate limit, audit) included, since they run once the route is known."""

    @blueprint.errorhandler(errors.KMSError)
    def handle_kms_error(error: errors.KMSError) -> Response:
        code, status = aws_code_for(error)
        if status >= 500:
            _log_server_fault(error)
        message = "internal error" if status == 500 else error.public_message
        response = aws_error_response(code, message, status)
        if isinstance(error, errors.PayloadTooLarge):
            discard_unread_body(response, request)
        if isinstance(error, errors.RateLimited):
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    @blueprint.errorhandler(ValidationError)
    def handle_validation_error(error: ValidationError) -> Response:
        return aws_error_response("ValidationException", _describe(error.messages))

    @blueprint.errorhandler(HTTPException)
    def handle_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status >= 500:
            return aws_error_response(AWS_INTERNAL, "internal error", status)
        return aws_error_response("ValidationException", (error.name or "error").lower(), status)

    @blueprint.errorhandler(Exception)
    def handle_unexpected(error: Exception) -> Response:
        log.exception("request %s failed unexpectedly", g.get("request_id", "-"))
        return aws_error_response(AWS_INTERNAL, "internal error", 500)


#: What Vault answers for a path it does not serve and a method a path does not take.
VAULT_HTTP_MESSAGES = {404: "unsupported path", 405: "unsupported operation"}


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
        # A schema-wide message (marshmallow's "_schema") stands alone, as Vault's do.
        return f"{prefix}: {text}" if prefix and prefix != "_schema" else text
    return f"{prefix}: {messages}" if prefix else str(messages)
