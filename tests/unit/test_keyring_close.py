"""``RootKeyring.close`` (kms.service.keyring: "a master key ... kept in a buffer that
``close`` overwrites") lets go of every key derived from the master key: the format-1 row-MAC
key ``kms upgrade`` reads with too, not only the format-2 one (test_secrets_in_memory.py).
"""

from __future__ import annotations

import os

import pytest

from kms.errors import IntegrityFailure
from kms.service.keyring import RootKeyring


def test_closing_the_keyring_refuses_a_legacy_tag_check() -> None:
    keyring = RootKeyring(bytearray(os.urandom(32)), b"i" * 16)
    with pytest.raises(IntegrityFailure):  # the control: open, it checks (and refuses a bad tag)
        keyring.verify_legacy_tag(b"row", bytes(32), "row")

    keyring.close()

    with pytest.raises(RuntimeError):
        keyring.verify_legacy_tag(b"row", bytes(32), "row")
