"""What each endpoint documents: its request body, query, success response and own errors.

Every view declares this once, with ``@documented(...)`` directly under ``@operation(...)``; the
OpenAPI description (``kms.api.openapi``) is built from these declarations and the marshmallow
schemas the view itself loads and dumps with, so the documentation cannot drift from the code. A
test walks the app's URL map and fails on any route without a declaration.

The errors every endpoint of a kind can answer are not repeated here; ``kms.api.openapi`` adds
them from the operation and the declaration: 400/413/415 for a body, 400 for a query, 403 and 429
under a policy, 500 and 503 everywhere. ``errors`` lists only what the view itself adds, such as
404 for a key that does not exist or 409 for a conflict.

Response schemas are documented as closed (every property required, no other allowed) and real
responses are validated against them; a property a response may leave out says so on its field:
``fields.String(metadata={"x-optional": True})``. After a change, ``make openapi``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from marshmallow import Schema

ATTRIBUTE = "kms_documentation"
JSON = "application/json"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Documentation:
    summary: str
    #: The success status; 204 documents an empty body.
    status: int = 200
    #: The success body's schema (an instance with ``many=True`` documents a JSON array).
    response: Schema | None = None
    body: Schema | None = None
    query: Schema | None = None
    #: Errors the view itself answers beyond the common ones: status -> when.
    errors: Mapping[int, str] = field(default_factory=dict)
    description: str | None = None
    #: The success body's media type when it is not JSON (``/metrics``).
    content_type: str = JSON
    tag: str | None = None
    #: Another success the view may answer instead: status -> (when, schema); e.g. DELETE's 200
    #: with the key when it schedules the deletion rather than destroying at once.
    also: Mapping[int, tuple[str, Schema]] = field(default_factory=dict)


def documented(
    summary: str,
    *,
    status: int = 200,
    response: Schema | None = None,
    body: Schema | None = None,
    query: Schema | None = None,
    errors: Mapping[int, str] | None = None,
    description: str | None = None,
    content_type: str = JSON,
    tag: str | None = None,
    also: Mapping[int, tuple[str, Schema]] | None = None,
) -> Callable[[F], F]:
    """Declare a view's documentation; put it directly under ``@operation(...)``."""
    if status != 204 and response is None and content_type == JSON:
        raise ValueError(f"{summary!r}: a JSON success response needs its schema")
    declared = Documentation(
        summary=summary,
        status=status,
        response=response,
        body=body,
        query=query,
        errors=dict(errors or {}),
        description=description,
        content_type=content_type,
        tag=tag,
        also=dict(also or {}),
    )

    def declare(view: F) -> F:
        setattr(view, ATTRIBUTE, declared)
        return view

    return declare


def documentation_of(view: Callable[..., Any] | None) -> Documentation | None:
    return getattr(view, ATTRIBUTE, None)
