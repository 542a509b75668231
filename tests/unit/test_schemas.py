"""The request schemas as the views load them: query values from text, required fields, null
contexts, strict base64; and ``fast_dump`` with renamed fields."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import Schema, ValidationError, fields

from kms.api import schemas


@pytest.mark.parametrize(
    ("schema", "query", "loaded"),
    [
        (schemas.delete_key_query, {"pending_days": "7"}, {"pending_days": 7}),
        (schemas.list_keys_query, {"limit": "5"}, {"limit": 5}),
        (schemas.list_versions_query, {"limit": "5", "after": "2"}, {"limit": 5, "after": 2}),
        (schemas.public_key_query, {"version": "3"}, {"version": 3}),
    ],
)
def test_query_integers_are_read_from_their_text(
    schema: Schema, query: dict[str, str], loaded: dict[str, Any]
) -> None:
    assert loaded.items() <= schema.load(query).items()


def test_a_query_integer_is_still_bounded() -> None:
    with pytest.raises(ValidationError):
        schemas.delete_key_query.load({"pending_days": "31"})
    with pytest.raises(ValidationError):
        schemas.list_keys_query.load({"limit": "1001"})


@pytest.mark.parametrize(
    "schema",
    [schemas.encrypt_request, schemas.decrypt_request, schemas.rewrap_request],
)
def test_a_null_context_means_none(schema: Schema) -> None:
    body = {"key_id": "k", "plaintext": "aGk=", "ciphertext": "djE6"}
    fields_of = set(schema.fields)
    loaded = schema.load(
        {name: value for name, value in body.items() if name in fields_of} | {"context": None}
    )
    assert loaded["context"] is None


@pytest.mark.parametrize("missing", ["key_id", "batch"])
def test_a_batch_needs_its_key_id_and_items(missing: str) -> None:
    body = {"key_id": "k", "batch": [{}]}
    del body[missing]
    with pytest.raises(ValidationError) as refused:
        schemas.batch_request.load(body)
    assert missing in refused.value.messages


@pytest.mark.parametrize("text", ["aGVs bG8=", "aGVs$bG8=", "aGVs\nbG8=", "aGVsbG8"])
def test_base64_is_strict(text: str) -> None:
    with pytest.raises(ValidationError):
        schemas.encrypt_request.load({"key_id": "k", "plaintext": text})


class _Renamed(Schema):
    shown = fields.String(data_key="outside", attribute="inside")
    plain = fields.Integer()


class _Thing:
    inside = "value"
    plain = 7


def test_fast_dump_follows_data_key_and_attribute() -> None:
    schema = _Renamed()
    assert (
        schemas.fast_dump(schema)(_Thing())
        == schema.dump(_Thing())
        == {
            "outside": "value",
            "plain": 7,
        }
    )
