"""The fast dump and load give exactly what the schemas' ``dump`` and ``load`` give: for batch
items and results, and for the single calls' bodies and answers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.api import crypto, schemas
from kms.service.keys import DataKey, Decrypted, Encrypted, Signed

key_ids = st.text(min_size=1, max_size=20)
versions = st.integers(min_value=1, max_value=2**31 - 1)
blobs = st.binary(max_size=64)

CASES: list[tuple[Any, Any, Any]] = [
    (
        schemas.encrypt_response,
        schemas.fast_encrypt_response,
        st.builds(Encrypted, key_ids, versions, st.text(max_size=40)),
    ),
    (
        schemas.decrypt_response,
        schemas.fast_decrypt_response,
        st.builds(Decrypted, key_ids, versions, blobs),
    ),
    (
        schemas.sign_response,
        schemas.fast_sign_response,
        st.builds(Signed, key_ids, versions, blobs),
    ),
]


@pytest.mark.parametrize(("schema", "fast", "results"), CASES)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_the_fast_dump_is_the_schemas_dump(
    schema: Any, fast: Any, results: Any, data: st.DataObject
) -> None:
    result = data.draw(results)
    assert fast(result) == schema.dump(result)
    assert list(fast(result)) == list(schema.dump(result))  # and in the same order


@settings(max_examples=50, deadline=None)
@given(
    key_id=key_ids, version=versions, ciphertext=st.text(max_size=40), plaintext=st.none() | blobs
)
def test_the_data_key_dump(
    key_id: str, version: int, ciphertext: str, plaintext: bytes | None
) -> None:
    result = DataKey(key_id, version, ciphertext, plaintext)
    dumped = schemas.dump_data_key(result)
    if plaintext is None:
        assert dumped == schemas.DataKeyResponse(exclude=("plaintext",)).dump(result)
        assert "plaintext" not in dumped
    else:
        assert dumped == schemas.DataKeyResponse().dump(result)
        assert list(dumped) == ["ciphertext", "plaintext", "key_id", "version"]


# -- loading batch items ----------------------------------------------------------------------

ITEM_SCHEMAS = {
    "encrypt": (schemas.encrypt_item, schemas.fast_encrypt_item),
    "decrypt": (schemas.decrypt_item, schemas.fast_decrypt_item),
    "rewrap": (schemas.rewrap_item, schemas.fast_rewrap_item),
    "datakey": (schemas.data_key_item, schemas.fast_data_key_item),
    "sign": (schemas.sign_item, schemas.fast_sign_item),
    "verify": (schemas.verify_item, schemas.fast_verify_item),
    # The single calls' bodies, key_id included (kms.api.crypto), on the same loader.
    **{
        f"{name} request": (call.request, call.load)
        for name, call in (
            ("encrypt", crypto.ENCRYPT),
            ("decrypt", crypto.DECRYPT),
            ("rewrap", crypto.REWRAP),
            ("datakey", crypto.DATA_KEY),
            ("sign", crypto.SIGN),
            ("verify", crypto.VERIFY),
        )
    },
}
FIELD_NAMES = [
    "plaintext",
    "ciphertext",
    "context",
    "bytes",
    "key_bytes",
    "include_plaintext",
    "message",
    "signature",
    "key_id",
    "other",
]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-40, 40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
json_values = (
    json_scalars
    | st.sampled_from(["AAAA", "aGk=", "!!", "djE6" + "A" * 40, ""])
    | st.sampled_from([16, 24, 32, 15, True, False])
    | st.lists(json_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=4), json_scalars, max_size=3)
)
items = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=5), json_values, max_size=5)


def outcome(load: Any, item: dict[str, Any]) -> tuple[str, Any]:
    from marshmallow import ValidationError

    from kms.api.errors import describe_validation_error

    try:
        return "loaded", load(item)
    except ValidationError as error:
        return "refused", describe_validation_error(error)


@pytest.mark.parametrize("operation", sorted(ITEM_SCHEMAS))
@settings(max_examples=150, deadline=None)
@given(item=items)
def test_the_fast_load_is_the_schemas_load(operation: str, item: dict[str, Any]) -> None:
    schema, fast = ITEM_SCHEMAS[operation]
    assert outcome(fast, item) == outcome(schema.load, item)


@pytest.mark.parametrize(
    ("operation", "item"),
    [
        ("encrypt", {"plaintext": "aGk=", "context": {"a": "b"}}),
        ("encrypt", {"plaintext": "aGk=", "context": None}),
        ("encrypt", {}),
        ("encrypt", {"plaintext": "aGk=", "key_id": "k", "x": 1}),
        ("datakey", {}),
        ("datakey", {"bytes": 16, "include_plaintext": False}),
        ("datakey", {"key_bytes": 16}),
        ("datakey", {"bytes": 20, "include_plaintext": None}),
        ("verify", {"message": "aGk=", "signature": "aGk="}),
        ("sign", {"message": 5}),
        ("encrypt request", {"key_id": "k", "plaintext": "aGk=", "context": {"a": "b"}}),
        ("encrypt request", {"plaintext": "aGk="}),
        ("encrypt request", {"key_id": 5, "plaintext": "!!", "batch": []}),
        ("datakey request", {"key_id": "k", "bytes": 20}),
        ("verify request", {"key_id": "k", "message": "aGk=", "signature": "aGk=", "version": 0}),
    ],
)
def test_the_fast_load_on_chosen_items(operation: str, item: dict[str, Any]) -> None:
    schema, fast = ITEM_SCHEMAS[operation]
    assert outcome(fast, item) == outcome(schema.load, item)
