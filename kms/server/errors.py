"""gunicorn's own refusals as kms answers: ``{"error": "..."}`` JSON, a 4xx for the client's fault.

gunicorn's parser raises these before any view runs (a malformed request line, a line or headers
over the limits, a bad header or chunked body); gunicorn would answer them with an HTML page.
The messages are fixed text: nothing the client sent is echoed back.
"""

from __future__ import annotations

import json
import ssl

from gunicorn.http import errors as http_errors

from kms.errors import PayloadTooLarge

REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def error_answer(exc: BaseException) -> tuple[int, str]:
    """The status and public message for an error gunicorn's parser raised (500 if unknown)."""
    if isinstance(exc, PayloadTooLarge):
        return 413, exc.public_message
    if isinstance(exc, http_errors.LimitRequestLine):
        return 414, "request line too long"
    if isinstance(exc, http_errors.LimitRequestHeaders):
        return 431, "request header fields too large"
    if isinstance(exc, http_errors.ExpectationFailed):
        return 417, "expectation not supported"
    if isinstance(exc, http_errors.ForbiddenProxyRequest):
        return 403, "request forbidden"
    if isinstance(exc, http_errors.ConfigurationProblem):
        return 500, "internal error"
    for error_class, message in _BAD_REQUEST_MESSAGES:
        if isinstance(exc, error_class):
            return 400, message
    if isinstance(exc, http_errors.ParseException | ssl.SSLError):
        return 400, "bad request"
    return 500, "internal error"


# An unsupported transfer coding is 400 rather than RFC 9112's 501: it is the client's fault,
# and kms answers every client fault with a 4xx.
_BAD_REQUEST_MESSAGES: tuple[tuple[type[BaseException], str], ...] = (
    (http_errors.InvalidRequestLine, "invalid request line"),
    (http_errors.InvalidRequestMethod, "invalid request method"),
    (http_errors.InvalidHTTPVersion, "invalid HTTP version"),
    (http_errors.InvalidHeaderName, "invalid header name"),
    (http_errors.InvalidHeader, "invalid header"),
    (http_errors.ObsoleteFolding, "obsolete header line folding"),
    (http_errors.UnsupportedTransferCoding, "unsupported transfer coding"),
    (http_errors.InvalidSchemeHeaders, "contradictory scheme headers"),
    (http_errors.InvalidChunkSize, "invalid chunked body"),
    (http_errors.ChunkMissingTerminator, "invalid chunked body"),
    (http_errors.InvalidChunkExtension, "invalid chunked body"),
    (http_errors.InvalidProxyLine, "invalid PROXY line"),
)


def json_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode("ascii")


def json_error(status: int, message: str) -> bytes:
    body = json_body(message)
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body
