"""What every AWS KMS view shares: the blueprint, reading AWS's request, naming its keys, and
answering.

**Naming keys.** ``key_id_of`` turns an AWS ``KeyId`` (key id, key ARN, alias name or alias ARN,
kms.api.aws.keys) into a key_id, looking an alias up through the service. It is resolved once
per request and identifier: the hooks (policy, audit) and the view see the same key, so an alias
moved while the request runs cannot make the view act on a key the policy never judged.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from flask import Blueprint, Request, Response, current_app, g, request
from marshmallow import Schema

from kms.api.aws import ACCOUNT, PREFIX, REQUEST_ID_HEADER
from kms.api.aws.keys import ALIAS_PREFIX, Account, from_blob
from kms.api.context import MAX_BODY_BYTES, note_algorithm, service
from kms.api.docs import documented
from kms.api.errors import AWS_JSON, register_aws_error_shape
from kms.api.operations import Target
from kms.api.payload import read_json_object
from kms.errors import IncorrectKey, KMSError

blueprint = Blueprint("aws", __name__, url_prefix=PREFIX)
register_aws_error_shape(blueprint)
MEDIA_TYPES = frozenset({AWS_JSON, "application/json"})
SEE = (
    "AWS KMS's operation of this name, usually sent as `POST /` with `X-Amz-Target: "
    "TrentService.<name>` (docs/aws-kms.md). Request and response bodies are "
    '`application/x-amz-json-1.1`; errors are `{"__type": "<AWS error code>", "message": ...}`.'
)
NOT_FOUND = {400: "NotFoundException, DisabledException, KMSInvalidStateException, ..."}


@blueprint.after_request
def tag_response(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = g.get("request_id", "-")
    return response


def aws_body() -> dict[str, Any]:
    """The request's JSON object, read once (shared with the hooks, as ``json_body`` is)."""
    state = g._get_current_object()
    body = state.get("kms_body")
    if body is None:
        try:
            body = read_json_object(request, current_app.config[MAX_BODY_BYTES], MEDIA_TYPES)
        except KMSError as error:
            body = error
        state.kms_body = body
    if isinstance(body, KMSError):
        raise body
    return body


def account() -> Account:
    return current_app.config[ACCOUNT]


def load(schema: Schema) -> dict[str, Any]:
    return schema.load(aws_body())


def key_id_of(identifier: str) -> str:
    """The key_id an AWS ``KeyId`` names (an alias looked up), the same for the whole request;
    ``KeyNotFound`` (``AliasNotFound``) if it names none."""
    resolved: dict[str, str | KMSError] = g.setdefault("kms_aws_keys", {})
    found = resolved.get(identifier)
    if found is None:
        try:
            name = account().name_of(identifier)
            found = service().resolve_alias(name) if name.startswith(ALIAS_PREFIX) else name
        except KMSError as error:
            found = error
        resolved[identifier] = found
    if isinstance(found, KMSError):
        raise found
    return found


def key_named_in(field: str) -> Any:
    """The hooks' ``Target``: the key the body's ``field`` names, resolved."""

    def target(_request: Request) -> Target:
        try:
            value = aws_body().get(field)
            return Target(key_id_of(value) if isinstance(value, str) else None)
        except KMSError:
            return Target(key_id=None)

    return target


def key_of_blob(_request: Request) -> Target:
    """The hooks' ``Target`` of Decrypt and ReEncrypt: the key the ciphertext blob names."""
    try:
        value = aws_body().get("CiphertextBlob")
        if not isinstance(value, str):
            return Target(key_id=None)
        return Target(from_blob(base64.b64decode(value, validate=True))[0])
    except (KMSError, ValueError):
        return Target(key_id=None)


def reply(
    document: dict[str, Any], *, version: int | None = None, algorithm: str | None = None
) -> Response:
    g.kms_answered_version = version
    if algorithm is not None:
        note_algorithm(algorithm)
    return Response(json.dumps(document), content_type=AWS_JSON)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def page_reply(field: str, entries: list[dict[str, Any]], next_marker: str | None) -> Response:
    """A page of a List operation: ``entries`` under ``field``, ``Truncated``, and while there is
    more the ``NextMarker`` that the next request passes as its ``Marker``."""
    document: dict[str, Any] = {field: entries, "Truncated": next_marker is not None}
    if next_marker is not None:
        document["NextMarker"] = next_marker
    return reply(document)


def opened_blob(blob: bytes, named: str | None) -> tuple[str, str]:
    """(key_id, native ciphertext) of a blob; ``IncorrectKey`` if ``named`` is another key."""
    key_id, native = from_blob(blob)
    if named is not None and key_id_of(named) != key_id:
        raise IncorrectKey()
    return key_id, b64(native)


def documented_aws(summary: str, body: Schema | None, errors: dict[int, str]) -> Any:
    return documented(
        summary, body=body, content_type=AWS_JSON, description=SEE, errors=errors, tag="aws-kms"
    )
