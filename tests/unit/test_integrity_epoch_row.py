"""``read_epoch`` (kms.service.integrity): a keystore epoch row that is not of format 1, or too
short to hold an epoch and a tag, is an integrity failure (503, counted, logged), never a crash.
"""

from __future__ import annotations

import os

import pytest

from kms.errors import IntegrityFailure
from kms.service.integrity import EPOCH_FORMAT_V1, epoch_row, read_epoch
from kms.service.keyring import RootKeyring


@pytest.fixture
def keyring() -> RootKeyring:
    return RootKeyring(bytearray(os.urandom(32)), b"i" * 16)


def test_a_good_epoch_row_reads_back(keyring: RootKeyring) -> None:
    assert read_epoch(keyring, epoch_row(keyring, 7)) == 7


@pytest.mark.parametrize("length", [0, 1, 5, 9])
def test_a_row_too_short_for_an_epoch_and_a_tag_is_malformed(
    keyring: RootKeyring, length: int
) -> None:
    short = epoch_row(keyring, 7)[:length]
    with pytest.raises(IntegrityFailure) as refused:
        read_epoch(keyring, short)
    assert refused.value.detail == "the keystore epoch row is malformed"


def test_a_row_of_another_format_is_malformed(keyring: RootKeyring) -> None:
    good = epoch_row(keyring, 7)
    assert good[:1] == EPOCH_FORMAT_V1
    with pytest.raises(IntegrityFailure) as refused:
        read_epoch(keyring, b"\x02" + good[1:])
    assert refused.value.detail == "the keystore epoch row is malformed"


def test_a_missing_epoch_row_is_an_integrity_failure(keyring: RootKeyring) -> None:
    with pytest.raises(IntegrityFailure) as refused:
        read_epoch(keyring, None)
    assert refused.value.detail == "the keystore epoch row is missing"


def test_an_epoch_row_s_known_answer() -> None:
    """Pinned: a change of its encoding or label (``kms/epoch/v1``) would make every stored
    epoch row an integrity failure."""
    fixed = RootKeyring(bytearray(range(32)), b"k" * 16)
    assert epoch_row(fixed, 7).hex() == (
        "010000000000000007024d7d5a887475736e4a13352b256a48a1b17d3368ad98dfb6d34f6bd4919e2161"
    )
