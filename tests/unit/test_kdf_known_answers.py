"""Known answers for the master-key derivation: PBKDF2 with HMAC-SHA256, as the README says.

A different hash (SHA-1, SHA-512) or a changed length derives other bytes from the same inputs,
so these fail; round-trip tests cannot notice, because they derive both sides the same wrong way.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from kms.crypto.kdf import MASTER_KEY_BYTES, KDFParameters, derive_master_key
from kms.errors import InvalidKDFParameters, KeystoreError

# RFC 7914 section 11, PBKDF2-HMAC-SHA256 (P="passwd", S="salt", c=1, dkLen=64); a 32-byte
# derivation is the first PBKDF2 block, so it is the first 32 bytes of the published answer.
RFC_7914 = bytes.fromhex(
    "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
    "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
)


def test_rfc_7914_vector() -> None:
    derived = derive_master_key(b"passwd", KDFParameters(iterations=1, salt=b"salt"))
    assert isinstance(derived, bytearray)
    assert len(derived) == MASTER_KEY_BYTES == 32
    assert bytes(derived) == RFC_7914[:32]


@pytest.mark.parametrize("iterations", [1, 2, 1000])
def test_agrees_with_hashlib_pbkdf2_sha256(iterations: int) -> None:
    salt = bytes(range(16))
    passphrase = bytearray(b"correct horse battery staple")
    expected = hashlib.pbkdf2_hmac("sha256", bytes(passphrase), salt, iterations, 32)
    assert derive_master_key(passphrase, KDFParameters(iterations=iterations, salt=salt)) == (
        expected
    )


def test_stored_parameters_name_sha256_and_round_trip() -> None:
    params = KDFParameters(iterations=600_000, salt=bytes(range(16)))
    encoded = params.encode()
    assert encoded == b"$pbkdf2-sha256$i=600000,l=32$AAECAwQFBgcICQoLDA0ODw=="
    assert KDFParameters.decode(encoded) == params


def test_fresh_parameters_respect_the_floor_and_take_a_new_salt() -> None:
    # Production's floor is MIN_ITERATIONS; tests lower it (Settings.insecure_test_kdf_floor).
    one = KDFParameters.generate(1, min_iterations=1)
    assert (one.iterations, len(one.salt), one.length) == (1, 16, 32)
    assert KDFParameters.generate(1, min_iterations=1).salt != one.salt
    with pytest.raises(InvalidKDFParameters, match="PBKDF2 iterations"):
        KDFParameters.generate(0, min_iterations=1)
    with pytest.raises(InvalidKDFParameters, match="PBKDF2 iterations"):
        KDFParameters.generate(1)


def test_parameters_cannot_be_changed_in_place() -> None:
    params = KDFParameters.generate()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.iterations = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "$pbkdf2-sha512$i=600000,l=32$AAECAwQFBgcICQoLDA0ODw==",
        "$pbkdf2-sha256$i=0,l=32$AAECAwQFBgcICQoLDA0ODw==",
        "$pbkdf2-sha256$i=600000,l=16$AAECAwQFBgcICQoLDA0ODw==",
        "$pbkdf2-sha256$i=600000,l=32$AAECAwQFBgcICQoLDA0O",
    ],
    ids=["empty", "sha512", "zero-iterations", "short-key", "short-salt"],
)
def test_unreadable_stored_parameters_are_refused(text: str) -> None:
    with pytest.raises(KeystoreError, match="KDF parameters"):
        KDFParameters.decode(text.encode("ascii"))
