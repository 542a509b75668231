"""What a view needs from the app: the service and the request body limit."""

from __future__ import annotations

from typing import Any

from flask import current_app, request

from kms.api.payload import read_json_object, read_query
from kms.service.keys import KMSService

SERVICE = "kms.service"
MAX_BODY_BYTES = "KMS_MAX_BODY_BYTES"


def service() -> KMSService:
    return current_app.extensions[SERVICE]


def json_body() -> dict[str, Any]:
    return read_json_object(request, current_app.config[MAX_BODY_BYTES])


def query_args() -> dict[str, str]:
    return read_query(request)
