"""Every tampered, malformed or misdirected ciphertext fails service.decrypt with InvalidCiphertext.

``pytest.raises(InvalidCiphertext)`` lets any other exception through as an error, so each case
also proves that nothing else (binascii, ValueError, InvalidTag, OverflowError...) escapes.
"""

from __future__ import annotations

import base64
import string
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.crypto.ciphertext import MAX_VERSION, format_ciphertext, parse_ciphertext
from kms.errors import InvalidCiphertext, KeyNotFound
from kms.service.keys import KMSService

KEY = "tamper-target"
PLAINTEXT = b"attack at dawn!"  # 3 + 12 + 15 + 16 = 46 bytes: base64 ends in "=="


@dataclass(frozen=True)
class Target:
    service: KMSService
    v1: str  # a ciphertext under version 1
    v2: str  # a ciphertext under version 2, the latest
    other_key: str  # a ciphertext under another AES-256-GCM key
    other_algorithm: str  # a ciphertext under a ChaCha20-Poly1305 key


@pytest.fixture(scope="module")
def target(module_service: KMSService) -> Target:
    service = module_service
    service.create_key(KEY, "encrypt", "AES-256-GCM")
    v1 = service.encrypt(KEY, PLAINTEXT).ciphertext
    service.rotate_key(KEY)
    v2 = service.encrypt(KEY, PLAINTEXT).ciphertext
    service.create_key("other-key", "encrypt", "AES-256-GCM")
    service.create_key("other-algorithm", "encrypt", "ChaCha20-Poly1305")
    return Target(
        service=service,
        v1=v1,
        v2=v2,
        other_key=service.encrypt("other-key", PLAINTEXT).ciphertext,
        other_algorithm=service.encrypt("other-algorithm", PLAINTEXT).ciphertext,
    )


def test_the_untampered_ciphertexts_decrypt(target: Target) -> None:
    # Without this the refusals below could all be one broken key.
    assert target.service.decrypt(KEY, target.v1).plaintext == PLAINTEXT
    assert target.service.decrypt(KEY, target.v2).plaintext == PLAINTEXT
    assert target.service.get_key(KEY).version == 2


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def body(text: str) -> bytes:
    """Nonce, ciphertext and tag of a real ciphertext: a body that looks valid in every way."""
    parsed = parse_ciphertext(text)
    return parsed.nonce + parsed.sealed


def relabel(version: int) -> Callable[[str], str]:
    def change(text: str) -> str:
        parsed = parse_ciphertext(text)
        return format_ciphertext(version, parsed.nonce, parsed.sealed)

    return change


def with_prefix(prefix: bytes) -> Callable[[str], str]:
    return lambda text: b64(prefix + body(text))


def flip_unused_padding_bit(text: str) -> str:
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    position = len(text.rstrip("=")) - 1
    changed = alphabet[alphabet.index(text[position]) ^ 1]
    return text[:position] + changed + text[position + 1 :]


# Each transformation turns the valid version-1 ciphertext into one that must be refused.
TAMPERINGS: dict[str, Callable[[str], str]] = {
    "prefix-v0": with_prefix(b"v0:"),
    "prefix-v-1": with_prefix(b"v-1:"),
    "prefix-v+1": with_prefix(b"v+1:"),
    "prefix-v01": with_prefix(b"v01:"),
    "prefix-v1-newline": with_prefix(b"v1\n:"),
    "prefix-arabic-indic-one": with_prefix("v\u0661:".encode()),
    "prefix-v99999999999": with_prefix(b"v99999999999:"),
    "prefix-v-max-plus-one": with_prefix(b"v%d:" % (MAX_VERSION + 1)),
    "prefix-5000-digits": with_prefix(b"v" + b"1" * 5000 + b":"),
    "no-prefix": lambda text: b64(body(text)),
    "empty": lambda text: "",
    "not-base64": lambda text: "this is not base64!",
    "non-ascii": lambda text: text[:-4] + "\u00e9\u00e9==",
    "inner-space": lambda text: text[:8] + " " + text[8:],
    "trailing-space": lambda text: text + " ",
    "leading-newline": lambda text: "\n" + text,
    "trailing-newline": lambda text: text + "\n",
    "mime-line-break": lambda text: text[:20] + "\r\n" + text[20:],
    "extra-padding": lambda text: text + "=",
    "padding-stripped": lambda text: text.rstrip("="),
    "non-canonical-padding-bits": flip_unused_padding_bit,
    "truncated-text": lambda text: text[:-4],
    "truncated-tag": lambda text: b64(parse_raw(text)[:-1]),
    "truncated-to-prefix-and-nonce": lambda text: b64(parse_raw(text)[: 3 + 12]),
    "truncated-below-nonce-and-tag": lambda text: b64(parse_raw(text)[: 3 + 12 + 15]),
    "appended-byte": lambda text: b64(parse_raw(text) + b"\x00"),
    "version-that-does-not-exist": relabel(5),
    "version-max": relabel(MAX_VERSION),
    "relabelled-as-version-2": relabel(2),
    "nonce-zeroed": lambda text: b64(b"v1:" + bytes(12) + parse_ciphertext(text).sealed),
}


def parse_raw(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_tampered_ciphertext_is_refused(target: Target, name: str) -> None:
    # The v1 text must have padding for the padding cases to mean anything.
    assert target.v1.endswith("=")
    tampered = TAMPERINGS[name](target.v1)
    assert tampered != target.v1
    with pytest.raises(InvalidCiphertext):
        target.service.decrypt(KEY, tampered)


def test_every_single_bit_flip_is_refused(target: Target) -> None:
    raw = parse_raw(target.v1)
    accepted: list[int] = []
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            target.service.decrypt(KEY, b64(bytes(flipped)))
        except InvalidCiphertext:
            continue
        accepted.append(bit)
    # Covers the prefix, every nonce bit, every ciphertext bit and every tag bit.
    assert len(raw) == 3 + 12 + len(PLAINTEXT) + 16
    assert accepted == []


def test_every_truncation_is_refused(target: Target) -> None:
    raw = parse_raw(target.v1)
    for length in range(len(raw)):
        with pytest.raises(InvalidCiphertext):
            target.service.decrypt(KEY, b64(raw[:length]))


def test_a_version_2_ciphertext_relabelled_as_version_1_is_refused(target: Target) -> None:
    with pytest.raises(InvalidCiphertext):
        target.service.decrypt(KEY, relabel(1)(target.v2))


@pytest.mark.parametrize("source", ["other_key", "other_algorithm"])
def test_a_ciphertext_of_another_key_is_refused(target: Target, source: str) -> None:
    foreign = getattr(target, source)
    assert parse_ciphertext(foreign).version == 1  # a version this key has too
    with pytest.raises(InvalidCiphertext):
        target.service.decrypt(KEY, foreign)


def test_the_ciphertext_only_decrypts_with_its_own_context(target: Target) -> None:
    ciphertext = target.service.encrypt(KEY, PLAINTEXT, {"tenant": "1"}).ciphertext
    assert target.service.decrypt(KEY, ciphertext, {"tenant": "1"}).plaintext == PLAINTEXT
    for context in ({}, {"tenant": "2"}, {"tenant": "1\x00"}, {"tenant": "1", "": ""}):
        with pytest.raises(InvalidCiphertext):
            target.service.decrypt(KEY, ciphertext, context)


def test_an_unknown_key_is_key_not_found_whatever_the_ciphertext(target: Target) -> None:
    for ciphertext in (target.v1, "", "garbage"):
        with pytest.raises(KeyNotFound):
            target.service.decrypt("no-such-key", ciphertext)


@settings(max_examples=50, deadline=None)
@given(
    ciphertext=st.one_of(
        st.text(max_size=100),
        st.binary(max_size=100).map(b64),
        st.tuples(st.integers(min_value=1, max_value=3), st.binary(min_size=28, max_size=80)).map(
            lambda pair: b64(b"v%d:" % pair[0] + pair[1])
        ),
    )
)
def test_random_ciphertexts_are_refused(target: Target, ciphertext: str) -> None:
    with pytest.raises(InvalidCiphertext):
        target.service.decrypt(KEY, ciphertext)
