"""The algorithm objects and seal/open at the crypto layer, without a database or a service."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kms.crypto.algorithms import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    ENCRYPTION_ALGORITHMS,
    MAC_ALGORITHMS,
    NONCE_BYTES,
    RSA_ENCRYPTION_ALGORITHMS,
    SIGNING_ALGORITHMS,
    Purpose,
    load_public_key,
    open_sealed,
    public_key_der,
    public_key_pem,
    seal,
)
from kms.crypto.ciphertext import ciphertext_aad, format_ciphertext, parse_ciphertext
from kms.errors import IntegrityFailure, InvalidCiphertext, InvalidSignature
from tests.helpers.keystore import MAX_TEST_PLAINTEXT, plaintexts

# Loaded once: hypothesis calls the test body many times and the AEAD objects are stateless.
AEADS = {name: spec.load(spec.generate()) for name, spec in ENCRYPTION_ALGORITHMS.items()}

# RSA-4096 is left to the service tests: generating it here would cost a second or more.
CHEAP_SIGNING = ["RSA-2048", "ECDSA-P256", "Ed25519"]


def test_the_catalogue_is_what_kms_promises() -> None:
    assert set(ENCRYPTION_ALGORITHMS) == {"AES-256-GCM", "ChaCha20-Poly1305"}
    assert set(RSA_ENCRYPTION_ALGORITHMS) == {"RSA-OAEP-2048", "RSA-OAEP-3072", "RSA-OAEP-4096"}
    assert set(SIGNING_ALGORITHMS) == {
        "RSA-2048",
        "RSA-3072",
        "RSA-4096",
        "ECDSA-P256",
        "ECDSA-P384",
        "Ed25519",
    }
    assert set(MAC_ALGORITHMS) == {"HMAC-SHA256", "HMAC-SHA512"}
    assert all(spec.purpose is Purpose.ENCRYPT for spec in ENCRYPTION_ALGORITHMS.values())
    assert all(spec.purpose is Purpose.ENCRYPT for spec in RSA_ENCRYPTION_ALGORITHMS.values())
    assert all(spec.purpose is Purpose.SIGN for spec in SIGNING_ALGORITHMS.values())
    assert all(spec.purpose is Purpose.MAC for spec in MAC_ALGORITHMS.values())
    assert DEFAULT_ALGORITHM == {
        Purpose.ENCRYPT: "AES-256-GCM",
        Purpose.SIGN: "ECDSA-P256",
        Purpose.MAC: "HMAC-SHA256",
    }
    for purpose, name in DEFAULT_ALGORITHM.items():
        assert ALGORITHMS[name].purpose is purpose


@pytest.mark.parametrize("name", sorted(ENCRYPTION_ALGORITHMS))
def test_symmetric_keys_are_256_bit_and_fresh(name: str) -> None:
    spec = ENCRYPTION_ALGORITHMS[name]
    first, second = spec.generate(), spec.generate()
    assert len(first) == len(second) == 32
    assert first != second
    assert spec.public_key_der(first) is None


@pytest.mark.parametrize("name", sorted(ENCRYPTION_ALGORITHMS))
@settings(max_examples=50, deadline=None)
@given(
    plaintext=plaintexts(),
    version=st.integers(min_value=1, max_value=2**31 - 1),
    context=st.binary(max_size=64),
)
@example(plaintext=b"", version=1, context=b"")
@example(plaintext=bytes(MAX_TEST_PLAINTEXT), version=1, context=b"")
def test_seal_format_parse_open_round_trips(
    name: str, plaintext: bytes, version: int, context: bytes
) -> None:
    aead = AEADS[name]
    aad = ciphertext_aad("round-trip", version, context)
    nonce, sealed = seal(aead, plaintext, aad)
    assert len(nonce) == NONCE_BYTES
    assert len(sealed) == len(plaintext) + 16
    parsed = parse_ciphertext(format_ciphertext(version, nonce, sealed))
    assert parsed.version == version
    assert open_sealed(aead, parsed.nonce, parsed.sealed, aad) == plaintext
    # The same plaintext under another AAD must not open: the AAD is what binds key and version.
    with pytest.raises(InvalidCiphertext):
        open_sealed(aead, parsed.nonce, parsed.sealed, ciphertext_aad("other", version, context))


@pytest.mark.parametrize("name", sorted(ENCRYPTION_ALGORITHMS))
def test_seal_uses_a_fresh_nonce_each_time(name: str) -> None:
    nonces = {seal(AEADS[name], b"same", b"aad")[0] for _ in range(64)}
    assert len(nonces) == 64


@pytest.mark.parametrize("name", sorted(ENCRYPTION_ALGORITHMS))
@pytest.mark.parametrize(
    ("nonce", "sealed"),
    [
        pytest.param(b"", bytes(16), id="empty-nonce"),
        pytest.param(bytes(11), bytes(16), id="short-nonce"),
        pytest.param(bytes(12), b"", id="empty-body"),
        pytest.param(bytes(12), bytes(15), id="shorter-than-a-tag"),
        pytest.param(bytes(12), bytes(16), id="zero-tag"),
    ],
)
def test_open_sealed_turns_every_failure_into_invalid_ciphertext(
    name: str, nonce: bytes, sealed: bytes
) -> None:
    with pytest.raises(InvalidCiphertext):
        open_sealed(AEADS[name], nonce, sealed, b"")


@pytest.mark.parametrize("name", CHEAP_SIGNING)
def test_sign_verify_and_public_key_export(name: str) -> None:
    spec = SIGNING_ALGORITHMS[name]
    secret = spec.generate()
    private_key = spec.load(secret)
    # The stored secret is an unencrypted PKCS#8 DER private key.
    assert serialization.load_der_private_key(bytes(secret), password=None) is not None
    der = spec.public_key_der(secret)
    public_key = load_public_key(der)
    assert public_key_pem(der).startswith("-----BEGIN PUBLIC KEY-----\n")
    signature = spec.sign(private_key, b"message")
    spec.verify(public_key, b"message", signature)
    with pytest.raises(InvalidSignature):
        spec.verify(public_key, b"messagE", signature)
    with pytest.raises(InvalidSignature):
        spec.verify(public_key, b"message", signature[:-1])
    with pytest.raises(InvalidSignature):
        spec.verify(public_key, b"message", b"")


def _pkcs8(private_key: object) -> bytes:
    return private_key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# (algorithm, a key that is not one of its keys): another type, another size, another curve.
_MISFITS = {
    "ECDSA-P256 given Ed25519": ("ECDSA-P256", lambda: ed25519.Ed25519PrivateKey.generate()),
    "ECDSA-P256 given P-384": ("ECDSA-P256", lambda: ec.generate_private_key(ec.SECP384R1())),
    "Ed25519 given ECDSA-P256": ("Ed25519", lambda: ec.generate_private_key(ec.SECP256R1())),
    "RSA-3072 given RSA-2048": ("RSA-3072", lambda: rsa.generate_private_key(65537, 2048)),
    "RSA-2048 given Ed25519": ("RSA-2048", lambda: ed25519.Ed25519PrivateKey.generate()),
}


@pytest.mark.parametrize("case", sorted(_MISFITS))
def test_load_refuses_a_key_that_does_not_fit_the_algorithm(case: str) -> None:
    name, make = _MISFITS[case]
    spec = SIGNING_ALGORITHMS[name]
    private_key = make()
    with pytest.raises(IntegrityFailure):
        spec.load(bytearray(_pkcs8(private_key)))
    with pytest.raises(IntegrityFailure):
        spec.load_public(public_key_der(private_key.public_key()))


@pytest.mark.parametrize("name", CHEAP_SIGNING)
def test_load_accepts_its_own_keys_and_refuses_garbage(name: str) -> None:
    spec = SIGNING_ALGORITHMS[name]
    secret = spec.generate()
    spec.load(secret)
    spec.load_public(spec.public_key_der(secret))
    with pytest.raises(IntegrityFailure):
        spec.load(bytearray(b"not DER"))
    with pytest.raises(IntegrityFailure):
        spec.load_public(b"not DER")


@pytest.mark.parametrize("name", sorted(ENCRYPTION_ALGORITHMS))
@pytest.mark.parametrize("size", [0, 16, 24, 31, 33, 64])
def test_an_encryption_key_of_the_wrong_size_is_refused(name: str, size: int) -> None:
    with pytest.raises(IntegrityFailure):
        ENCRYPTION_ALGORITHMS[name].load(bytearray(size))


@pytest.mark.parametrize("name", sorted(ENCRYPTION_ALGORITHMS))
def test_a_loaded_encryption_key_is_compact_interoperable_and_hides_its_key(name: str) -> None:
    """A loaded AEAD key keeps the raw key only (cryptography's cipher objects keep 2.7 KB of
    OpenSSL contexts each, which would put 100,000 cached versions far over the 150 MB a worker
    may use: docs/operations.md, Memory), seals exactly as the library's own cipher, and shows no
    key."""
    spec = ENCRYPTION_ALGORITHMS[name]
    secret = spec.generate()
    loaded = spec.load(secret)
    assert not hasattr(loaded, "__dict__")  # slots only: nothing cached beside the key
    assert secret.hex() not in repr(loaded) and bytes(secret).hex() not in str(loaded)
    nonce, sealed = seal(loaded, b"interoperable", b"aad")
    assert spec.aead_class(bytes(secret)).decrypt(nonce, sealed, b"aad") == b"interoperable"
    assert open_sealed(loaded, nonce, sealed, b"aad") == b"interoperable"
