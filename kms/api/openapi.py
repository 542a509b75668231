"""The OpenAPI 3.1 description of the API, built from the app's URL map and its declarations.

Each route contributes what its view declares: ``@operation`` (whether a policy applies, where
the key comes from) and ``@documented`` (summary, schemas, own errors). Request and response
schemas are the marshmallow schemas the views load and dump with, converted by apispec, so the
description and the code cannot disagree. ``GET /v1/kms/openapi.json`` serves it (a client
certificate, no policy rule) and ``make openapi`` writes it to ``docs/openapi.json``.

Response schemas are closed: every documented property is required and no other may appear,
unless its field says ``metadata={"x-optional": True}`` (a property a response may leave out). A
test validates real responses of every endpoint against this, so a response that grows a field
its schema does not document fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, cast

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin, OpenAPIConverter
from flask import Blueprint, Flask, Response, current_app
from marshmallow import Schema, fields
from werkzeug.routing import Rule

from kms import __version__
from kms.api import schemas
from kms.api.docs import JSON, Documentation, documentation_of, documented
from kms.api.errors import VAULT_PREFIX
from kms.api.operations import KeyFrom, Operation, declared_operation, operation
from kms.api.vault.schemas import VaultErrors
from kms.service.keys.validation import KEY_ID_PATTERN

SPEC_PATH = "/v1/kms/openapi.json"
VAULT_ERRORS = "VaultErrors"
OPENAPI_VERSION = "3.1.0"
_CACHE = "kms.openapi"
# LIST is Vault's (its routes also answer GET ?list=true); OpenAPI has no such method.
_IGNORED_METHODS = frozenset({"HEAD", "OPTIONS", "LIST"})
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

blueprint = Blueprint("openapi", __name__)

#: What each common error means, in the words of docs/api.md.
COMMON_ERRORS: dict[int, str] = {
    400: "invalid request: malformed JSON, an unknown or invalid field or query parameter",
    403: "forbidden: the policy does not allow the caller this operation on this key",
    413: "request body too large",
    415: "Content-Type must be application/json",
    429: "rate limit exceeded (see the Retry-After header)",
    500: "internal error (the detail is in the server log only)",
    503: "storage unavailable, retry later; or audit log unavailable, request refused",
}


class ErrorResponse(Schema):
    """Every error, whatever its status: ``{"error": "<safe public message>"}``."""

    error = fields.String(required=True)


@blueprint.get(SPEC_PATH)
@operation("openapi", needs_policy=False)
@documented(
    "This description of the API (OpenAPI 3.1)",
    response=schemas.OpenAPIDocumentResponse(),
    tag="meta",
)
def openapi_document() -> Response:
    text = current_app.extensions.get(_CACHE)
    if text is None:
        # The URL map is fixed once the app is built: describe it once per process.
        text = current_app.extensions[_CACHE] = render(build_spec(current_app))
    return Response(text, content_type=JSON)


def render(spec: dict[str, Any]) -> str:
    """The one serialisation, shared by the endpoint and ``docs/openapi.json``."""
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def routes(app: Flask) -> Iterator[tuple[Rule, str]]:
    """Every (rule, method) the app serves, in a stable order."""
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: (rule.rule, rule.endpoint)):
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - _IGNORED_METHODS):
            yield rule, method


def openapi_path(rule: Rule) -> str:
    """``/v1/kms/keys/<key_id>`` -> ``/v1/kms/keys/{key_id}``."""
    return _CONVERTER.sub(r"{\1}", rule.rule)


def undocumented_routes(app: Flask) -> list[str]:
    """Routes whose view lacks ``@documented`` or ``@operation``: ``METHOD /path (endpoint)``."""
    missing = []
    for rule, method in routes(app):
        view = app.view_functions.get(rule.endpoint)
        if documentation_of(view) is None or declared_operation(app, rule.endpoint) is None:
            missing.append(f"{method} {rule.rule} ({rule.endpoint})")
    return missing


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented route of ``app``."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="kms",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "On-premise key management service: envelope encryption, signing and "
            "key versioning over mutual TLS. Every request needs a client certificate signed by "
            "the configured CA; binary values are standard base64.",
            "license": {"name": "PolyForm Noncommercial License 1.0.0"},
        },
        servers=[{"url": "https://localhost:8080", "description": "make run"}],
        security=[{"clientCertificate": []}],
    )
    plugin.map_to_openapi_type(schemas.StrictBase64, "string", "byte")
    plugin.map_to_openapi_type(schemas.StrictInteger, "integer", None)
    converter = cast(OpenAPIConverter, plugin.converter)  # made by APISpec(plugins=[plugin])
    converter.add_attribute_function(_integer_bounds)
    spec.components.security_scheme(
        "clientCertificate",
        {"type": "mutualTLS", "description": "a client certificate signed by the configured CA"},
    )
    spec.components.schema("Error", schema=ErrorResponse)
    spec.components.schema(VAULT_ERRORS, schema=VaultErrors)

    operations: dict[str, dict[str, Any]] = {}
    for rule, method in routes(app):
        view = app.view_functions.get(rule.endpoint)
        documentation = documentation_of(view)
        declared = declared_operation(app, rule.endpoint)
        if documentation is None or declared is None:
            continue  # undocumented_routes() names it; a test fails on it
        path = openapi_path(rule)
        operations.setdefault(path, {})[method.lower()] = _operation(
            rule, rule.endpoint, documentation, declared
        )
    for path, by_method in operations.items():
        spec.path(path=path, operations=by_method)
    document = spec.to_dict()
    _close_response_schemas(document, _response_schema_names(converter, app))
    return document


def _operation(
    rule: Rule, endpoint: str, documentation: Documentation, declared: Operation
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"),
        "summary": documentation.summary,
        "tags": [documentation.tag or endpoint.split(".")[0]],
        "responses": {},
    }
    if documentation.description:
        entry["description"] = documentation.description
    if declared.needs_policy:
        entry["x-kms-operation"] = declared.name
    parameters: list[dict[str, Any]] = [
        {
            "in": "path",
            "name": name,
            "required": True,
            "schema": {"type": "string", "pattern": f"^{KEY_ID_PATTERN.pattern}$"}
            if name == "key_id"
            else {"type": "string"},
        }
        # A rule's defaults (``/hash`` for ``/hash/<algorithm>``) are not in its path.
        for name in sorted(rule.arguments - set(rule.defaults or {}))
    ]
    if documentation.query is not None:
        parameters.append({"in": "query", "schema": documentation.query})
    if parameters:
        entry["parameters"] = parameters
    if documentation.body is not None:
        entry["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": documentation.body}},
        }
    entry["responses"][str(documentation.status)] = _success(documentation)
    for status, (description, schema) in sorted(documentation.also.items()):
        entry["responses"][str(status)] = {
            "description": description,
            "content": {JSON: {"schema": schema}},
        }
    # The Vault routes answer errors in Vault's shape (kms.api.errors).
    error_schema = VAULT_ERRORS if rule.rule.startswith(VAULT_PREFIX) else "Error"
    for status, description in sorted(_errors(rule, documentation, declared).items()):
        entry["responses"][str(status)] = {
            "description": description,
            "content": {JSON: {"schema": error_schema}},
        }
    return entry


def _success(documentation: Documentation) -> dict[str, Any]:
    if documentation.status == 204:
        return {"description": "done; no body"}
    if documentation.content_type != JSON:
        return {
            "description": "success",
            "content": {documentation.content_type: {"schema": {"type": "string"}}},
        }
    return {"description": "success", "content": {JSON: {"schema": documentation.response}}}


def _errors(rule: Rule, documentation: Documentation, declared: Operation) -> dict[int, str]:
    statuses = {500, 503}
    if documentation.body is not None:
        statuses |= {400, 413, 415}
    if documentation.query is not None:
        statuses.add(400)
    if declared.needs_policy:
        statuses |= {403, 429}
    if declared.key_from is KeyFrom.PATH or "key_id" in rule.arguments:
        statuses.add(400)  # a key_id that no key may have
    errors = {status: COMMON_ERRORS[status] for status in statuses}
    for status, description in documentation.errors.items():
        errors[status] = f"{description}; or {errors[status]}" if status in errors else description
    return errors


def _integer_bounds(converter: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    if isinstance(field, schemas.StrictInteger):
        return {"minimum": field.low, "maximum": field.high}
    return {}


def _response_schema_names(converter: OpenAPIConverter, app: Flask) -> set[str]:
    names = {"Error", VAULT_ERRORS}
    for rule, _method in routes(app):
        documentation = documentation_of(app.view_functions.get(rule.endpoint))
        if documentation is None:
            continue
        if documentation.response is not None:
            names |= _nested_names(converter, documentation.response)
        for _description, schema in documentation.also.values():
            names |= _nested_names(converter, schema)
    return names


def _nested_names(converter: OpenAPIConverter, schema: Schema) -> set[str]:
    names = {converter.schema_name_resolver(schema)}
    for field in schema.fields.values():
        inner = field.inner if isinstance(field, fields.List) else field
        if isinstance(inner, fields.Nested):
            names |= _nested_names(converter, inner.schema)
    return names


def _close_response_schemas(document: dict[str, Any], names: set[str]) -> None:
    """Responses always carry every documented property, and nothing else (see module doc)."""
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        if name not in names or "properties" not in schema:
            continue
        optional = {
            key for key, value in schema["properties"].items() if value.pop("x-optional", False)
        }
        schema["required"] = sorted(set(schema["properties"]) - optional)
        schema.setdefault("additionalProperties", False)
