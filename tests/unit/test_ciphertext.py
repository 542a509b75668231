from __future__ import annotations

import base64
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kms.crypto.ciphertext import (
    MAX_VERSION,
    NONCE_BYTES,
    TAG_BYTES,
    ciphertext_aad,
    format_ciphertext,
    format_versioned,
    parse_ciphertext,
)
from kms.crypto.encoding import encode_aad
from kms.errors import InvalidCiphertext

# The shortest body the parser must accept: a nonce and a tag around an empty plaintext.
MIN_BODY = NONCE_BYTES + TAG_BYTES
BODY = bytes(range(MIN_BODY + 5))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def test_format_then_parse_round_trips() -> None:
    text = format_ciphertext(7, b"n" * 12, b"s" * 20)
    parsed = parse_ciphertext(text)
    assert (parsed.version, parsed.nonce, parsed.sealed) == (7, b"n" * 12, b"s" * 20)


def test_parse_refuses_text_without_prefix() -> None:
    with pytest.raises(InvalidCiphertext):
        parse_ciphertext("AAAA")


@settings(max_examples=50, deadline=None)
@given(
    version=st.integers(min_value=1, max_value=MAX_VERSION),
    nonce=st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES),
    sealed=st.binary(min_size=TAG_BYTES, max_size=512),
)
@example(version=MAX_VERSION, nonce=bytes(NONCE_BYTES), sealed=bytes(TAG_BYTES))
def test_round_trip_any_version_nonce_and_body(version: int, nonce: bytes, sealed: bytes) -> None:
    text = format_ciphertext(version, nonce, sealed)
    assert text.isascii()
    parsed = parse_ciphertext(text)
    assert (parsed.version, parsed.nonce, parsed.sealed) == (version, nonce, sealed)


@pytest.mark.parametrize("version", [0, -1, MAX_VERSION + 1])
def test_format_refuses_a_version_out_of_range(version: int) -> None:
    with pytest.raises(ValueError):
        format_ciphertext(version, bytes(NONCE_BYTES), bytes(TAG_BYTES))
    with pytest.raises(ValueError):  # the RSA-OAEP envelope too (found by make mutants)
        format_versioned(version, b"body")


def test_parse_accepts_the_shortest_body() -> None:
    parsed = parse_ciphertext(b64(b"v1:" + BODY[:MIN_BODY]))
    assert parsed.version == 1
    assert parsed.nonce == BODY[:NONCE_BYTES]
    assert parsed.sealed == BODY[NONCE_BYTES:MIN_BODY]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"v0:" + BODY, id="v0"),
        pytest.param(b"v-1:" + BODY, id="v-1"),
        pytest.param(b"v+1:" + BODY, id="v+1"),
        pytest.param(b"v01:" + BODY, id="v01"),
        pytest.param(b"v1\n:" + BODY, id="v1-newline"),
        pytest.param(b"v 1:" + BODY, id="v-space-1"),
        pytest.param(b"V1:" + BODY, id="capital-V"),
        pytest.param(b"v1;" + BODY, id="no-colon"),
        pytest.param("v\u0661:".encode() + BODY, id="arabic-indic-digit"),
        pytest.param("v\uff11:".encode() + BODY, id="fullwidth-digit"),
        pytest.param(b"v2147483648:" + BODY, id="max-version-plus-one"),
        pytest.param(b"v99999999999:" + BODY, id="eleven-digits"),
        pytest.param(b"v" + b"1" * 5000 + b":" + BODY, id="5000-digits"),
        pytest.param(BODY, id="no-prefix"),
        pytest.param(b"v1:", id="prefix-only"),
        pytest.param(b"v1:" + BODY[: MIN_BODY - 1], id="body-one-byte-short"),
        pytest.param(b"", id="empty"),
    ],
)
def test_parse_refuses_a_bad_version_prefix_or_short_body(raw: bytes) -> None:
    with pytest.raises(InvalidCiphertext):
        parse_ciphertext(b64(raw))


def _valid_text(body_length: int) -> str:
    return b64(b"v1:" + bytes(range(body_length)))


def _flip_unused_padding_bit(text: str) -> str:
    """Change a bit that base64 padding leaves unused: same bytes, another spelling."""
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    position = len(text.rstrip("=")) - 1
    changed = alphabet[alphabet.index(text[position]) ^ 1]
    return text[:position] + changed + text[position + 1 :]


# Body lengths that make "v1:" + body need two ("==") and one ("=") padding characters.
TWO_PADDING = _valid_text(MIN_BODY)  # 31 bytes
ONE_PADDING = _valid_text(MIN_BODY + 1)  # 32 bytes
NO_PADDING = _valid_text(MIN_BODY + 2)  # 33 bytes


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(TWO_PADDING[:10] + " " + TWO_PADDING[10:], id="inner-space"),
        pytest.param(" " + TWO_PADDING, id="leading-space"),
        pytest.param(TWO_PADDING + " ", id="trailing-space"),
        pytest.param(TWO_PADDING + "\n", id="trailing-newline"),
        pytest.param(TWO_PADDING[:8] + "\r\n" + TWO_PADDING[8:], id="mime-line-break"),
        pytest.param(TWO_PADDING[:8] + "\t" + TWO_PADDING[8:], id="tab"),
        pytest.param(TWO_PADDING + "=", id="extra-padding-after-two"),
        pytest.param(ONE_PADDING + "=", id="extra-padding-after-one"),
        pytest.param(NO_PADDING + "==", id="padding-on-complete-text"),
        pytest.param(NO_PADDING + "====", id="a-block-of-padding"),
        pytest.param(TWO_PADDING.rstrip("="), id="padding-missing"),
        pytest.param(TWO_PADDING[:-1], id="padding-short"),
        pytest.param(TWO_PADDING[:-3], id="truncated-text"),
        pytest.param(NO_PADDING.replace("+", "-").replace("/", "_") + "-_", id="url-safe-alphabet"),
        pytest.param("not base64!", id="not-base64"),
        pytest.param("\u0661" + TWO_PADDING, id="non-ascii"),
        pytest.param(TWO_PADDING + "\x00", id="nul"),
    ],
)
def test_parse_refuses_anything_but_canonical_base64(text: str) -> None:
    with pytest.raises(InvalidCiphertext):
        parse_ciphertext(text)


@pytest.mark.parametrize("text", [TWO_PADDING, ONE_PADDING], ids=["two-padding", "one-padding"])
def test_parse_refuses_non_canonical_padding_bits(text: str) -> None:
    parse_ciphertext(text)  # the canonical spelling is fine
    tampered = _flip_unused_padding_bit(text)
    # Lenient decoders read both spellings as the same bytes: only canonicality tells them apart.
    assert tampered != text
    assert base64.b64decode(tampered) == base64.b64decode(text)
    with pytest.raises(InvalidCiphertext):
        parse_ciphertext(tampered)


@pytest.mark.parametrize("value", [None, b"djE6AAAA", 1, ["v1:"]], ids=repr)
def test_parse_refuses_what_is_not_a_string(value: object) -> None:
    with pytest.raises(InvalidCiphertext):
        parse_ciphertext(value)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=80),
        st.binary(max_size=80).map(b64),
        st.binary(max_size=60).map(lambda body: b64(b"v1:" + body)),
    )
)
def test_parse_of_any_text_refuses_or_returns_the_one_canonical_spelling(text: str) -> None:
    # Only InvalidCiphertext may escape; anything accepted must format back to the same text.
    try:
        parsed = parse_ciphertext(text)
    except InvalidCiphertext:
        return
    assert format_ciphertext(parsed.version, parsed.nonce, parsed.sealed) == text


def test_aad_binds_key_id_version_and_context() -> None:
    base = ciphertext_aad("key", 1, b"ctx")
    assert ciphertext_aad("key", 1, b"ctx") == base
    assert ciphertext_aad("key2", 1, b"ctx") != base
    assert ciphertext_aad("key", 2, b"ctx") != base
    assert ciphertext_aad("key", 1, b"") != base


def test_aad_fields_cannot_run_into_each_other() -> None:
    # Without length prefixes "a"+"bc" and "ab"+"c" would encode alike.
    assert encode_aad(b"label", "a", "bc") != encode_aad(b"label", "ab", "c")
    assert ciphertext_aad("key1", 2) != ciphertext_aad("key", 12)
