"""Reading a JSON request body safely.

The body is read by us, up to the configured limit plus one byte, whatever the transfer encoding:
Werkzeug's own limit silently truncates a chunked body under gunicorn, so a view would see a
shorter body and, say, encrypt truncated data. Over the limit is always 413.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Request, Response

from kms.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

_NOT_JSON = "request body is not valid JSON"
#: How much of an oversized body is read and thrown away after the 413 has been sent.
DISCARD_LIMIT_BYTES = 16 * 1024 * 1024


JSON_ONLY = frozenset({"application/json"})


def read_json_object(
    request: Request, max_bytes: int, media_types: frozenset[str] = JSON_ONLY
) -> dict[str, Any]:
    """The body as a JSON object; ``media_types``: the Content-Types accepted (a compatible
    API's own, such as AWS's ``application/x-amz-json-1.1``)."""
    if request.mimetype not in media_types:
        raise UnsupportedMediaType()
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge()
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge()
    try:
        text = raw.decode("utf-8")
        document = json.loads(
            text, object_pairs_hook=_without_duplicates, parse_constant=_no_constants
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequest(_NOT_JSON) from None
    # Only an escape can produce a lone surrogate ("\ud800"); valid UTF-8 never does. A body
    # without a backslash has no escape: one memchr-fast scan, instead of two scans for the
    # two-character "\u" that cost ~0.2 ms each on a 64 KiB plaintext's base64.
    if "\\" in text and ("\\u" in text or "\\U" in text):
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("request body holds an invalid unicode escape") from None
    if not isinstance(document, dict):
        raise InvalidRequest("request body must be a JSON object")
    return document


def read_query(request: Request) -> dict[str, str]:
    """The query string as one value per name; a name given twice is refused.

    ``limit=1&limit=1000`` has no single meaning (Werkzeug would silently keep the first), and a
    proxy or cache in front may read the other one.
    """
    query: dict[str, str] = {}
    for name, values in request.args.lists():
        if len(values) > 1:
            raise InvalidRequest(f"query parameter {name} is given more than once")
        query[name] = values[0]
    return query


def discard_unread_body(response: Response, request: Request) -> None:
    """Once ``response`` is sent, read and drop what is left of the request body.

    Closing a connection whose receive buffer still holds data makes the kernel send a reset,
    and the client then loses the 413 it was sent. Reading the rest first (as a web server's
    lingering close does) lets the client see the answer and keep its connection. The reading
    happens in the WSGI ``close`` call, after gunicorn has written the response; a body larger
    than DISCARD_LIMIT_BYTES is left for gunicorn to drop with the connection.
    """
    stream = request.stream

    def discard() -> None:
        remaining = DISCARD_LIMIT_BYTES
        try:
            while remaining > 0 and (chunk := stream.read(min(remaining, 64 * 1024))):
                remaining -= len(chunk)
        except OSError:
            pass  # the client went away: nothing left to protect

    response.call_on_close(discard)


def _without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate field")
    return document


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
