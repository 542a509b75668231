"""The encryption context's canonical encoding (docs/api.md, "Encryption context"): pinned bytes,
one encoding whatever the order, no two contexts alike, and the limits."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.crypto.ciphertext import (
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_PAIRS,
    ciphertext_aad,
    encode_context,
)
from kms.errors import InvalidRequest

contexts = st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=6)


def test_the_encoding_is_pinned() -> None:
    # The bytes docs/api.md writes down; a client in another language reproduces exactly these.
    context = {"tenant": "acme", "row": "42", "b": "é"}
    assert encode_context(context) == (
        b"\x00\x00\x00\x01b\x00\x00\x00\x02\xc3\xa9"
        b"\x00\x00\x00\x03row\x00\x00\x00\x0242"
        b"\x00\x00\x00\x06tenant\x00\x00\x00\x04acme"
    )
    assert ciphertext_aad("orders", 3, encode_context({"k": "v"})) == (
        b"kms/ciphertext/v1"
        b"\x00\x00\x00\x06orders"
        b"\x00\x00\x00\x013"
        b"\x00\x00\x00\x0a\x00\x00\x00\x01k\x00\x00\x00\x01v"
    )


def test_keys_sort_by_their_utf8_bytes() -> None:
    # "Z" < "a" < "é" (U+00E9) < "€" (U+20AC) < "😀" (U+1F600): code point order is byte order.
    context = {"😀": "1", "€": "2", "é": "3", "a": "4", "Z": "5"}
    encoded = encode_context(context)
    keys = []
    offset = 0
    while offset < len(encoded):
        (length,) = struct.unpack_from(">I", encoded, offset)
        keys.append(encoded[offset + 4 : offset + 4 + length].decode("utf-8"))
        offset += 4 + length
        (length,) = struct.unpack_from(">I", encoded, offset)
        offset += 4 + length
    assert keys == ["Z", "a", "é", "€", "😀"]
    assert keys == sorted(keys, key=lambda key: key.encode("utf-8"))


def test_no_context_and_the_empty_context_encode_to_nothing() -> None:
    assert encode_context(None) == encode_context({}) == b""


@settings(max_examples=200, deadline=None)
@given(context=contexts, data=st.data())
def test_the_order_of_the_pairs_does_not_matter(
    context: dict[str, str], data: st.DataObject
) -> None:
    shuffled = dict(data.draw(st.permutations(list(context.items()))))
    assert encode_context(shuffled) == encode_context(context)


@settings(max_examples=300, deadline=None)
@given(first=contexts, second=contexts)
def test_different_contexts_encode_differently(
    first: dict[str, str], second: dict[str, str]
) -> None:
    if first != second:
        assert encode_context(first) != encode_context(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"ab": "c"}, {"a": "bc"}),
        ({"a": "", "b": ""}, {"a": "\x00\x00\x00\x01b\x00\x00\x00\x00"}),
        ({"a": "b"}, {"a": "b", "": ""}),
    ],
)
def test_pairs_cannot_run_into_each_other(first: dict[str, str], second: dict[str, str]) -> None:
    assert encode_context(first) != encode_context(second)


def test_at_most_64_pairs() -> None:
    assert MAX_CONTEXT_PAIRS == 64
    encode_context({f"k{i}": "" for i in range(64)})
    with pytest.raises(InvalidRequest, match="at most 64 pairs"):
        encode_context({f"k{i}": "" for i in range(65)})


def test_at_most_4096_bytes_encoded() -> None:
    assert MAX_CONTEXT_BYTES == 4096
    assert len(encode_context({"k": "v" * 4087})) == 4096
    with pytest.raises(InvalidRequest, match="at most 4096 bytes"):
        encode_context({"k": "v" * 4088})
    # Multi-byte characters count as their UTF-8 bytes: 4087 bytes is 2043 "é" and one "v".
    assert len(encode_context({"k": "é" * 2043 + "v"})) == 4096
    with pytest.raises(InvalidRequest, match="at most 4096 bytes"):
        encode_context({"k": "é" * 2044})


@pytest.mark.parametrize("context", [{"k": 1}, {"k": None}, {1: "v"}, {"k": "\ud800"}])
def test_keys_and_values_must_be_strings(context: dict) -> None:
    with pytest.raises(InvalidRequest, match="must be strings"):
        encode_context(context)


def test_messages_never_quote_the_context() -> None:
    for context in ({"secret-key": "secret-value" * 400}, {f"secret-{i}": "v" for i in range(65)}):
        with pytest.raises(InvalidRequest) as excinfo:
            encode_context(context)
        assert "secret" not in excinfo.value.public_message
