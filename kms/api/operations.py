"""What each endpoint is: its operation name and where the key it touches comes from.

Every view declares this once, with ``@operation(...)``; authorization, audit, metrics and rate
limits read the declaration through ``declared_operation`` and never look inside a view. A test
walks the app's URL map and fails on any route without one, so a new endpoint cannot forget them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from flask import Flask, Request, g

from kms.api.context import json_body
from kms.errors import KMSError

ATTRIBUTE = "kms_operation"

#: Every operation a policy may name. The ones no endpoint declares yet belong to open issues;
#: a policy may grant them now, so it need not change when they arrive.
KNOWN_OPERATIONS = frozenset(
    {
        "keys:create",
        "keys:read",
        "keys:update",
        "keys:rotate",
        "keys:recreate",
        "keys:delete",
        "keys:disable",
        "keys:enable",
        "keys:trim",
        "keys:cancel-deletion",
        "aliases:create",
        "aliases:update",
        "aliases:delete",
        "encrypt",
        "decrypt",
        "sign",
        "verify",
        "datakey",
        "rewrap",
        "mac",
        "mac:verify",
        "random",
        "hash",
        "metrics",
    }
)


#: The operations that change nothing stored about a key or its policy: they use keys (and may
#: move a version's use counters or note a refused use of a key pending deletion, bookkeeping
#: that proves nothing), read them, or touch no key at all. Audited by one line, written once
#: the view has answered and before the answer is sent (kms.api.audit). Every other operation,
#: and any a future endpoint adds, writes its intent line before the view runs as well.
CHANGES_NOTHING = frozenset(
    {
        "keys:read",
        "encrypt",
        "decrypt",
        "sign",
        "verify",
        "datakey",
        "rewrap",
        "mac",
        "mac:verify",
        "random",
        "hash",
        "metrics",
    }
)


class KeyFrom(Enum):
    """Where a request names its key."""

    NONE = "none"  # no key (a list, metrics) or not about keys at all
    PATH = "path"  # the URL's <key_id>
    BODY = "body"  # the JSON body's "key_id" (encrypt, decrypt, sign, verify, ...)


@dataclass(frozen=True)
class Operation:
    name: str
    key_from: KeyFrom = KeyFrom.NONE
    #: False for the health checks: a verified certificate is enough, no policy rule is needed.
    needs_policy: bool = True
    #: For a compatible API whose requests name their key otherwise (an AWS ``KeyId`` may be an
    #: ARN or an alias, a ciphertext blob may name it): finds the key in the request; must not
    #: raise (a request it cannot read names no key).
    target: Callable[[Request], Target] | None = None
    #: ``(field, other)``: the request is operation ``other`` when its JSON body holds ``field``
    #: (Vault's ``/verify`` checks a signature, or with ``hmac`` a MAC: ``mac:verify``).
    when_field: tuple[str, str] | None = None


F = TypeVar("F", bound=Callable[..., Any])


def operation(
    name: str,
    key_from: KeyFrom = KeyFrom.NONE,
    *,
    needs_policy: bool = True,
    target: Callable[[Request], Target] | None = None,
    when_field: tuple[str, str] | None = None,
) -> Callable[[F], F]:
    """Declare a view's operation; put it directly above the ``def``, below the route."""
    for declared_name in (name, *(when_field[1:] if when_field else ())):
        if needs_policy and declared_name not in KNOWN_OPERATIONS:
            raise ValueError(f"unknown operation {declared_name!r}; add it to KNOWN_OPERATIONS")
    declared = Operation(
        name=name,
        key_from=key_from,
        needs_policy=needs_policy,
        target=target,
        when_field=when_field,
    )

    def declare(view: F) -> F:
        setattr(view, ATTRIBUTE, declared)
        return view

    return declare


def declared_operation(app: Flask, endpoint: str | None) -> Operation | None:
    view = app.view_functions.get(endpoint) if endpoint else None
    return getattr(view, ATTRIBUTE, None)


def operation_name(declared: Operation, request: Request) -> str:
    """The operation a request is: the declared name, or ``when_field``'s other operation when
    the request's JSON body holds that field (a body that cannot be read holds none)."""
    if declared.when_field is None or request.mimetype != "application/json":
        return declared.name
    field, other = declared.when_field
    try:
        body = json_body()
    except KMSError:
        return declared.name
    return other if body.get(field) is not None else declared.name


@dataclass(frozen=True)
class Target:
    """The key a request names, as far as the request says (it may not exist)."""

    key_id: str | None
    item_count: int | None = None  # a batch request: how many items, never what they hold
    alias_name: str | None = None  # an alias change: the alias (AWS KMS's alias operations)


def request_target(declared: Operation | None, request: Request) -> Target:
    """Find the key a request names without doing anything with it.

    A body that cannot be parsed names no key; the view raises its error when it reads the body
    (``json_body`` keeps the error), after authorization and audit have seen the request.
    """
    if declared is None or declared.key_from is KeyFrom.NONE:
        return Target(key_id=None)
    if declared.target is not None:
        return declared.target(request)
    if declared.key_from is KeyFrom.PATH:
        key_id = (request.view_args or {}).get("key_id")
        return Target(key_id=key_id if isinstance(key_id, str) else None)
    try:
        body = json_body()
    except KMSError:
        return Target(key_id=None)
    key_id = body.get("key_id")
    items = body.get("batch")
    return Target(
        key_id=key_id if isinstance(key_id, str) else None,
        item_count=len(items) if isinstance(items, list) else None,
    )


def current_target() -> Target:
    return g.get("kms_target") or Target(key_id=None)
