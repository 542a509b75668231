"""``encode_alias_row`` (kms.service.integrity): the bytes an alias row's MAC covers, pinned."""

from __future__ import annotations

from datetime import UTC, datetime

from kms.service.integrity import encode_alias_row
from kms.service.keyring import RootKeyring
from kms.store.records import AliasRecord


def test_an_alias_row_s_known_answer() -> None:
    """Pinned: a change of its encoding or label (``kms/alias-row/v1``) would make every stored
    alias row an integrity failure after an upgrade."""
    fixed = RootKeyring(bytearray(range(32)), b"k" * 16)
    at = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    alias = AliasRecord("alias/orders", "orders-1", at, at, generation=7)
    assert fixed.tag(encode_alias_row(alias)).hex() == (
        "028fd7d9f96d1c55361077295f18b4cab6204ade1f071f1bb1e19349a8fd764736"
    )
