"""KDF parameters: one canonical spelling, bounded iterations, on write as on read."""

from __future__ import annotations

import hashlib

import pytest

from kms.crypto.kdf import MAX_ITERATIONS, MIN_ITERATIONS, KDFParameters, derive_master_key
from kms.errors import InvalidKDFParameters

SALT = bytes(range(16))


def test_round_trip_and_the_stored_form() -> None:
    params = KDFParameters(iterations=MIN_ITERATIONS, salt=SALT)
    assert params.encode() == b"$pbkdf2-sha256$i=600000,l=32$AAECAwQFBgcICQoLDA0ODw=="
    assert KDFParameters.decode(params.encode()) == params


@pytest.mark.parametrize("iterations", [MIN_ITERATIONS, MAX_ITERATIONS])
def test_the_bounds_themselves_are_accepted(iterations: int) -> None:
    params = KDFParameters.generate(iterations)
    assert KDFParameters.decode(params.encode()).iterations == iterations


@pytest.mark.parametrize("iterations", [0, 1, 1000, MIN_ITERATIONS - 1, MAX_ITERATIONS + 1])
def test_out_of_bounds_counts_are_refused_on_write(iterations: int) -> None:
    with pytest.raises(InvalidKDFParameters):
        KDFParameters.generate(iterations)


@pytest.mark.parametrize(
    "raw",
    [
        b"$pbkdf2-sha256$i=600000,l=32$AAECAwQFBgcICQoLDA0ODw== ",
        b" $pbkdf2-sha256$i=600000,l=32$AAECAwQFBgcICQoLDA0ODw==",
        b"$pbkdf2-sha256$i=600000,l=32$AAECAwQFBgcICQoLDA0ODw==\n",
        b"$pbkdf2-sha256$i=0600000,l=32$AAECAwQFBgcICQoLDA0ODw==",
        b"$pbkdf2-sha256$i=+600000,l=32$AAECAwQFBgcICQoLDA0ODw==",
        b"$pbkdf2-sha256$i=600000,l=16$AAECAwQFBgcICQoLDA0ODw==",
        b"$pbkdf2-sha512$i=600000,l=32$AAECAwQFBgcICQoLDA0ODw==",
        b"$pbkdf2-sha256$i=600000,l=32$AAECAwQFBgcICQoLDA0ODw",
        b"$pbkdf2-sha256$i=600000,l=32$AAECAwQFBgcICQoLDA0ODx==",  # non-zero padding bits
        b"$pbkdf2-sha256$i=\xd9\xa6\xd9\xa0\xd9\xa0000,l=32$AAECAwQFBgcICQoLDA0ODw==",
        b"$pbkdf2-sha256$i=600000,l=32$AAECAwQFBgcICQoLDA0OD\xff==",
        b"$pbkdf2-sha256$i=99999999999,l=32$AAECAwQFBgcICQoLDA0ODw==",
        b"",
    ],
)
def test_anything_but_the_canonical_form_is_refused_on_read(raw: bytes) -> None:
    with pytest.raises(InvalidKDFParameters) as excinfo:
        KDFParameters.decode(raw)
    assert "\n" not in excinfo.value.public_message


def test_a_lower_floor_is_only_an_explicit_argument() -> None:
    weak = KDFParameters(iterations=1000, salt=SALT).encode()
    with pytest.raises(InvalidKDFParameters):
        KDFParameters.decode(weak)
    assert KDFParameters.decode(weak, min_iterations=1000).iterations == 1000


def test_derivation_matches_pbkdf2_and_fills_a_mutable_buffer() -> None:
    params = KDFParameters(iterations=1000, salt=SALT)
    master_key = derive_master_key(bytearray(b"passphrase"), params)
    assert isinstance(master_key, bytearray)
    assert master_key == hashlib.pbkdf2_hmac("sha256", b"passphrase", SALT, 1000, 32)


def test_messages_say_whether_the_stored_parameters_or_a_request_was_refused() -> None:
    """An operator reading the one-line startup error must know the database is at fault.

    Found by ``make mutants``: the wording could change from "stored" to "refusing" unseen, and
    the non-ASCII check could be dropped (the pattern then refuses with a vaguer message).
    """
    weak = KDFParameters(iterations=1000, salt=SALT).encode()
    with pytest.raises(InvalidKDFParameters, match="^the stored KDF parameters ask for 1000 "):
        KDFParameters.decode(weak)
    with pytest.raises(InvalidKDFParameters, match="^refusing 1000 PBKDF2 iterations"):
        KDFParameters.generate(1000)
    with pytest.raises(InvalidKDFParameters, match="non-ASCII"):
        KDFParameters.decode("$pbkdf2-sha256$i=٦٠٠000,l=32$AAECAwQFBgcICQoLDA0ODw==".encode())
