"""What a view needs from the app: the service and the request body limit."""

from __future__ import annotations

from typing import Any

from flask import current_app, g, request

from kms.api.payload import read_json_object, read_query
from kms.errors import KMSError
from kms.service.keys import KMSService

SERVICE = "kms.service"
MAX_BODY_BYTES = "KMS_MAX_BODY_BYTES"


def service() -> KMSService:
    return current_app.extensions[SERVICE]


def json_body() -> dict[str, Any]:
    """The request's JSON object, read once per request.

    The request hooks read it to find the key a request names; the view then gets the same
    object, or the same error, without reading the stream a second time.
    """
    if "kms_body" not in g:
        try:
            g.kms_body = read_json_object(request, current_app.config[MAX_BODY_BYTES])
        except KMSError as error:
            g.kms_body = error
    if isinstance(g.kms_body, KMSError):
        raise g.kms_body
    return g.kms_body


def query_args() -> dict[str, str]:
    return read_query(request)
