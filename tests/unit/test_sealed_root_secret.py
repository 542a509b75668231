"""The sealed root secret's row (kms.service.masterkey.sealed_body): a malformed one is named as
tampering, never taken for a wrong passphrase, and a missing one says the keystore is not
initialised. Found by ``make mutants`` (tools/mutants)."""

from __future__ import annotations

import pytest

from kms.errors import KeystoreTampered, NotInitialised
from kms.service.masterkey import SEALED_BY_PASSPHRASE, SEALED_BYTES, sealed_body
from kms.store.records import ROOT_SECRET


@pytest.mark.parametrize(
    "sealed",
    [
        SEALED_BY_PASSPHRASE + bytes(SEALED_BYTES - 2),  # one byte short
        SEALED_BY_PASSPHRASE + bytes(SEALED_BYTES),  # one byte more
        b"\x09" + bytes(SEALED_BYTES - 1),  # the right length, a format byte of no backend
    ],
    ids=["short", "long", "no backend"],
)
def test_a_malformed_sealed_root_secret_is_named_as_tampering(sealed: bytes) -> None:
    with pytest.raises(KeystoreTampered, match="root_secret in kms_metadata"):
        sealed_body({ROOT_SECRET: sealed}, "passphrase")


def test_a_well_formed_sealed_root_secret_gives_its_body() -> None:
    sealed = SEALED_BY_PASSPHRASE + bytes(range(SEALED_BYTES - 1))
    assert sealed_body({ROOT_SECRET: sealed}, "passphrase") == sealed[1:]


def test_no_sealed_root_secret_is_not_initialised() -> None:
    with pytest.raises(NotInitialised):
        sealed_body({}, "passphrase")
