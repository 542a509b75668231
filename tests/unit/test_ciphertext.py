from __future__ import annotations

import pytest

from kms.crypto.ciphertext import format_ciphertext, parse_ciphertext
from kms.errors import InvalidCiphertext


def test_format_then_parse_round_trips() -> None:
    text = format_ciphertext(7, b"n" * 12, b"s" * 20)
    parsed = parse_ciphertext(text)
    assert (parsed.version, parsed.nonce, parsed.sealed) == (7, b"n" * 12, b"s" * 20)


def test_parse_refuses_text_without_prefix() -> None:
    with pytest.raises(InvalidCiphertext):
        parse_ciphertext("AAAA")
