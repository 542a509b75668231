"""The key types and signing options of issue 10 at the crypto layer: HMAC (RFC 4231 known
answers), RSA-OAEP limits, signature schemes and prehashed digests, without a database."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from kms.crypto.algorithms import (
    DIGEST_ALGORITHMS,
    MAC_ALGORITHMS,
    RSA_ENCRYPTION_ALGORITHMS,
    RSA_SIGNATURE_SCHEMES,
    SIGNING_ALGORITHMS,
)
from kms.errors import IntegrityFailure, InvalidCiphertext, InvalidRequest, InvalidSignature
from kms.service.keys.operations import KeyOperations
from kms.service.keys.validation import MAX_RANDOM_BYTES

# RFC 4231, section 4: HMAC-SHA-256 and HMAC-SHA-512 test cases 1 to 7.
RFC4231 = [
    # (test case, key, data, HMAC-SHA-256, HMAC-SHA-512); case 5 is truncated to 128 bits.
    (
        "1",
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
    ),
    (
        "2",
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    ),
    (
        "3",
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
        "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
    ),
    (
        "4",
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db"
        "a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
    ),
    (
        "5",
        b"\x0c" * 20,
        b"Test With Truncation",
        "a3b6167473100ee06e0c796c2955552b",
        "415fad6271580a531d4179bc891d87a6",
    ),
    (
        "6",
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
    ),
    (
        "7",
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size data."
        b" The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
        "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
    ),
]


@pytest.mark.parametrize(("case", "key", "data", "sha256", "sha512"), RFC4231)
def test_hmac_rfc4231_vectors(case: str, key: bytes, data: bytes, sha256: str, sha512: str) -> None:
    for name, expected in (("HMAC-SHA256", sha256), ("HMAC-SHA512", sha512)):
        hmac_key = MAC_ALGORITHMS[name].key(key)
        tag = hmac_key.mac(data)
        assert tag.hex().startswith(expected), (case, name)
        if len(expected) == 2 * len(tag):  # case 5 gives only a truncated MAC
            hmac_key.verify(data, bytes.fromhex(expected))
        with pytest.raises(InvalidSignature):
            hmac_key.verify(data + b"x", tag)
        with pytest.raises(InvalidSignature):
            hmac_key.verify(data, tag[:-1] + bytes([tag[-1] ^ 1]))
        with pytest.raises(InvalidSignature):
            hmac_key.verify(data, tag[:16])  # a truncated MAC is not accepted


@pytest.mark.parametrize(("name", "size"), [("HMAC-SHA256", 32), ("HMAC-SHA512", 64)])
def test_mac_keys_are_digest_sized_fresh_and_checked_on_load(name: str, size: int) -> None:
    spec = MAC_ALGORITHMS[name]
    first, second = spec.generate(), spec.generate()
    assert len(first) == len(second) == size
    assert first != second
    assert spec.public_key_der(first) is None
    loaded = spec.load(first)
    assert bytes(first).hex() not in repr(loaded)
    loaded.verify(b"m", loaded.mac(b"m"))
    for wrong in (0, 16, size - 1, size + 1):
        with pytest.raises(IntegrityFailure):
            spec.load(bytearray(wrong))


@pytest.fixture(scope="module")
def oaep_2048() -> tuple[object, object]:
    spec = RSA_ENCRYPTION_ALGORITHMS["RSA-OAEP-2048"]
    private_key = spec.load(spec.generate())
    return private_key, private_key.public_key()  # type: ignore[attr-defined]


def test_oaep_limits_are_the_oaep_sha256_bound() -> None:
    assert {name: spec.max_plaintext for name, spec in RSA_ENCRYPTION_ALGORITHMS.items()} == {
        "RSA-OAEP-2048": 190,
        "RSA-OAEP-3072": 318,
        "RSA-OAEP-4096": 446,
    }


def test_oaep_round_trip_limit_and_failures(oaep_2048: tuple[object, object]) -> None:
    private_key, public_key = oaep_2048
    spec = RSA_ENCRYPTION_ALGORITHMS["RSA-OAEP-2048"]
    for size in (0, 1, 190):
        plaintext = bytes(range(256))[:size]
        ciphertext = spec.encrypt(public_key, plaintext)  # type: ignore[arg-type]
        assert len(ciphertext) == 256
        assert spec.decrypt(private_key, ciphertext) == plaintext  # type: ignore[arg-type]
        # cryptography's own OAEP-SHA256 decrypts it: the parameters are the standard ones.
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        assert private_key.decrypt(ciphertext, oaep) == plaintext  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequest, match="at most 190 bytes"):
        spec.encrypt(public_key, bytes(191))  # type: ignore[arg-type]
    good = spec.encrypt(public_key, b"secret")  # type: ignore[arg-type]
    for bad in (b"", good[:-1], good + b"\0", good[:-1] + bytes([good[-1] ^ 1]), bytes(256)):
        with pytest.raises(InvalidCiphertext):
            spec.decrypt(private_key, bad)  # type: ignore[arg-type]


def test_rsa_oaep_load_checks_the_size() -> None:
    small = RSA_ENCRYPTION_ALGORITHMS["RSA-OAEP-2048"]
    secret = small.generate()
    with pytest.raises(IntegrityFailure):
        RSA_ENCRYPTION_ALGORITHMS["RSA-OAEP-3072"].load(secret)
    with pytest.raises(IntegrityFailure):
        RSA_ENCRYPTION_ALGORITHMS["RSA-OAEP-3072"].load_public(small.public_key_der(secret))
    with pytest.raises(IntegrityFailure):  # an EC key is no RSA-OAEP key
        small.load(SIGNING_ALGORITHMS["ECDSA-P256"].generate())


def test_ecdsa_p384_refuses_p256_material() -> None:
    with pytest.raises(IntegrityFailure):
        SIGNING_ALGORITHMS["ECDSA-P384"].load(SIGNING_ALGORITHMS["ECDSA-P256"].generate())
    secret = SIGNING_ALGORITHMS["ECDSA-P384"].generate()
    private_key = SIGNING_ALGORITHMS["ECDSA-P384"].load(secret)
    assert isinstance(private_key.curve, ec.SECP384R1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, object]:
    return {
        name: SIGNING_ALGORITHMS[name].load(SIGNING_ALGORITHMS[name].generate())
        for name in ("RSA-2048", "ECDSA-P256", "ECDSA-P384", "Ed25519")
    }


def _schemes() -> list[tuple[str, str]]:
    pairs = [("RSA-2048", name) for name in RSA_SIGNATURE_SCHEMES]
    return pairs + [("ECDSA-P256", "ECDSA-SHA256"), ("ECDSA-P384", "ECDSA-SHA384")]


@pytest.mark.parametrize(("algorithm", "scheme_name"), _schemes())
def test_a_prehashed_signature_is_the_signature_over_the_data(
    signing_keys: dict[str, object], algorithm: str, scheme_name: str
) -> None:
    spec = SIGNING_ALGORITHMS[algorithm]
    private_key = signing_keys[algorithm]
    public_key = private_key.public_key()  # type: ignore[attr-defined]
    data = b"a large file, hashed by the client" * 100
    plain = spec.scheme(scheme_name)
    digest_name = plain.digest
    assert digest_name is not None
    digest = hashlib.new(digest_name.replace("-", "").lower(), data).digest()
    prehashed = spec.scheme(scheme_name, prehashed=True, digest_algorithm=digest_name)
    signature = spec.sign(private_key, digest, prehashed, prehashed=True)  # type: ignore[arg-type]
    # Checked over the data itself, as a verifier without kms would do.
    spec.verify(public_key, data, signature, plain)
    spec.verify(public_key, digest, signature, prehashed, prehashed=True)
    with pytest.raises(InvalidSignature):
        spec.verify(public_key, data + b"!", signature, plain)
    # And the other way: a signature over the data verifies against its digest.
    spec.verify(public_key, digest, spec.sign(private_key, data, plain), prehashed, prehashed=True)  # type: ignore[arg-type]
    for wrong in (digest[:-1], digest + b"\0", b""):
        with pytest.raises(InvalidRequest, match=f"{len(digest)} bytes"):
            spec.sign(private_key, wrong, prehashed, prehashed=True)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match=f"{len(digest)} bytes"):
            spec.verify(public_key, wrong, signature, prehashed, prehashed=True)


def test_each_rsa_scheme_is_its_own(signing_keys: dict[str, object]) -> None:
    """A signature made under one scheme does not verify under another."""
    spec = SIGNING_ALGORITHMS["RSA-2048"]
    private_key = signing_keys["RSA-2048"]
    public_key = private_key.public_key()  # type: ignore[attr-defined]
    for made in RSA_SIGNATURE_SCHEMES.values():
        signature = spec.sign(private_key, b"m", made)  # type: ignore[arg-type]
        for checked in RSA_SIGNATURE_SCHEMES.values():
            if checked is made:
                spec.verify(public_key, b"m", signature, checked)
            else:
                with pytest.raises(InvalidSignature):
                    spec.verify(public_key, b"m", signature, checked)
    # The default stays RSA-PSS-SHA256, as before the choice existed.
    assert spec.scheme() is RSA_SIGNATURE_SCHEMES["RSA-PSS-SHA256"]


@pytest.mark.parametrize(
    ("algorithm", "options", "message"),
    [
        ("RSA-2048", {"signing_algorithm": "RSA-PSS-MD5"}, "must be one of: RSA-PSS-SHA256"),
        ("ECDSA-P256", {"signing_algorithm": "RSA-PSS-SHA256"}, "must be one of: ECDSA-SHA256"),
        ("ECDSA-P384", {"signing_algorithm": "ECDSA-SHA256"}, "must be one of: ECDSA-SHA384"),
        ("Ed25519", {"prehashed": True, "digest_algorithm": "SHA-512"}, "Ed25519 cannot sign"),
        ("Ed25519", {"prehashed": True}, "Ed25519 cannot sign"),
        ("RSA-2048", {"prehashed": True}, "needs digest_algorithm"),
        ("RSA-2048", {"digest_algorithm": "SHA-256"}, "only for prehashed"),
        (
            "RSA-2048",
            {"prehashed": True, "digest_algorithm": "SHA-384"},
            "does not match RSA-PSS-SHA256",
        ),
        (
            "ECDSA-P384",
            {"prehashed": True, "digest_algorithm": "SHA-256"},
            "does not match ECDSA-SHA384",
        ),
    ],
)
def test_scheme_requests_that_make_no_sense_are_refused(
    algorithm: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        SIGNING_ALGORITHMS[algorithm].scheme(**options)  # type: ignore[arg-type]


def test_ed25519_refuses_a_digest_even_without_the_scheme_check(
    signing_keys: dict[str, object],
) -> None:
    spec = SIGNING_ALGORITHMS["Ed25519"]
    private_key = signing_keys["Ed25519"]
    with pytest.raises(InvalidRequest, match="prehashed"):
        spec.sign(private_key, bytes(32), prehashed=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="prehashed"):
        spec.verify(private_key.public_key(), bytes(32), bytes(64), prehashed=True)  # type: ignore[attr-defined]


def test_digest_algorithms_on_the_wire() -> None:
    assert set(DIGEST_ALGORITHMS) == {"SHA-256", "SHA-384", "SHA-512"}


def test_random_bytes_bounds() -> None:
    assert MAX_RANDOM_BYTES == 1024
    assert len(KeyOperations.random_bytes(1)) == 1
    assert len(KeyOperations.random_bytes(1024)) == 1024
    assert KeyOperations.random_bytes(32) != KeyOperations.random_bytes(32)
    for bad in (0, 1025, -1, True, 3.0, "8"):
        with pytest.raises(InvalidRequest):
            KeyOperations.random_bytes(bad)  # type: ignore[arg-type]
