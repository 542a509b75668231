"""The request schemas as the views load them: query values from text, required fields, null
contexts, strict base64; and ``fast_dump`` with renamed fields."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from marshmallow import Schema, ValidationError, fields

from kms.api import schemas
from kms.api.vault.wire import from_vault_ciphertext, parse_duration
from kms.errors import InvalidCiphertext


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


def test_vault_durations_add_their_hours_minutes_and_seconds() -> None:
    """Vault's `auto_rotate_period` (Go's units h, m, s)."""
    assert parse_duration("1h30m15s") == 3600 + 30 * 60 + 15
    assert parse_duration("2h5s") == 7205
    assert parse_duration("90m") == 5400


def test_a_vault_ciphertext_version_is_read_up_to_the_largest_int32() -> None:
    """Vault parses the version as a 32-bit integer: 2147483647 is a version (which a key may
    not have), 2147483648 is not a number Vault could have written."""
    body = base64.b64encode(b"x" * 28).decode()
    opened = from_vault_ciphertext(f"vault:v{2**31 - 1}:{body}")
    assert base64.b64decode(opened).startswith(b"v2147483647:")
    with pytest.raises(InvalidCiphertext, match="version number could not be decoded"):
        from_vault_ciphertext(f"vault:v{2**31}:{body}")


def test_an_encryption_context_is_an_object_of_strings_to_strings() -> None:
    """docs/api.md: `context` maps strings to strings; anything else is refused (400) before
    it reaches the service."""
    body = {"key_id": "k", "plaintext": "eA=="}
    loaded = schemas.encrypt_request.load({**body, "context": {"tenant": "a"}})
    assert loaded["context"] == {"tenant": "a"}
    for context in ({"tenant": 1}, ["tenant"], "tenant=a"):
        with pytest.raises(ValidationError, match="string keys to string values"):
            schemas.encrypt_request.load({**body, "context": context})
