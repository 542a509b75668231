"""The crypto views pass a loaded body straight on (``service.encrypt(**body)``): each request
schema's fields must be the service method's keywords, and cover every one it requires."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from marshmallow import Schema

from kms.api import crypto, schemas
from kms.service.keys.operations import KeyOperations

CALLS: list[tuple[str, Schema, Callable[..., Any]]] = [
    ("encrypt", crypto.ENCRYPT.request, KeyOperations.encrypt),
    ("decrypt", crypto.DECRYPT.request, KeyOperations.decrypt),
    ("datakey", crypto.DATA_KEY.request, KeyOperations.generate_data_key),
    ("rewrap", crypto.REWRAP.request, KeyOperations.rewrap),
    ("sign", crypto.SIGN.request, KeyOperations.sign),
    ("verify", crypto.VERIFY.request, KeyOperations.verify),
    ("mac", schemas.mac_request, KeyOperations.mac),
    ("mac/verify", schemas.mac_verify_request, KeyOperations.verify_mac),
    ("random", schemas.random_request, KeyOperations.random_bytes),
]


def keywords(schema: Schema) -> set[str]:
    """The names a loaded body holds: each field's attribute, else its name."""
    return {field.attribute or name for name, field in schema.load_fields.items()}


@pytest.mark.parametrize(("schema", "method"), [c[1:] for c in CALLS], ids=[c[0] for c in CALLS])
def test_a_request_body_is_the_service_methods_keywords(
    schema: Schema, method: Callable[..., Any]
) -> None:
    parameters = {
        name: parameter
        for name, parameter in inspect.signature(method).parameters.items()
        if name != "self"
    }
    assert keywords(schema) <= set(parameters)
    required = {
        name
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty
    }
    assert required <= keywords(schema)


def test_random_keeps_its_wire_name() -> None:
    # The field is named after the service's keyword (count); clients still send "bytes".
    assert schemas.random_request.load({"bytes": 16}) == {"count": 16}
