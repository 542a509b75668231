"""Issue 10's rules at the service layer, on a real SQLite keystore: what the API cannot reach
yet (an encryption context for RSA-OAEP keys) and what needs a service built with other limits
(``version`` reaching past ``verify_max_versions``)."""

from __future__ import annotations

import pytest

from kms.errors import InvalidCiphertext, InvalidRequest, PurposeMismatch
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService, MACed
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import make_service


@pytest.fixture
def capped(repository: SQLKeyRepository, keyring: RootKeyring) -> KMSService:
    """A service whose verify without a version tries only the two newest versions."""
    return make_service(repository, keyring, KeyMaterialCache(1024), verify_max_versions=2)


def test_rsa_oaep_keys_refuse_an_encryption_context(service: KMSService) -> None:
    service.create_key("oaep", "encrypt", "RSA-OAEP-2048")
    encrypted = service.encrypt("oaep", b"x")
    with pytest.raises(InvalidRequest, match="RSA-OAEP-2048 keys do not support"):
        service.encrypt("oaep", b"x", context=b"tenant=1")
    with pytest.raises(InvalidRequest, match="RSA-OAEP-2048 keys do not support"):
        service.decrypt("oaep", encrypted.ciphertext, context=b"tenant=1")
    assert service.decrypt("oaep", encrypted.ciphertext).plaintext == b"x"


def test_an_rsa_oaep_ciphertext_names_a_version_the_key_has(service: KMSService) -> None:
    service.create_key("oaep", "encrypt", "RSA-OAEP-2048")
    ciphertext = service.encrypt("oaep", b"x").ciphertext
    relabelled = ciphertext.replace(ciphertext[:4], "djI6", 1)  # base64 of "v1:" -> "v2:"
    assert relabelled != ciphertext
    with pytest.raises(InvalidCiphertext):
        service.decrypt("oaep", relabelled)
    # An AEAD key's ciphertext is not an OAEP ciphertext and the other way round.
    service.create_key("aes", "encrypt")
    with pytest.raises(InvalidCiphertext):
        service.decrypt("aes", ciphertext)
    with pytest.raises(InvalidCiphertext):
        service.decrypt("oaep", service.encrypt("aes", b"x").ciphertext)


def test_verify_by_version_reaches_past_the_cap(capped: KMSService) -> None:
    capped.create_key("signer", "sign", "ECDSA-P384")
    signed = capped.sign("signer", b"release 1.0")
    for _ in range(3):
        capped.rotate_key("signer")
    assert not capped.verify("signer", b"release 1.0", signed.signature).valid
    verified = capped.verify("signer", b"release 1.0", signed.signature, version=1)
    assert (verified.valid, verified.version) == (True, 1)
    assert not capped.verify("signer", b"release 1.0", signed.signature, version=4).valid


def test_mac_verify_by_version_reaches_past_the_cap(capped: KMSService) -> None:
    created = capped.create_key("tokens", "mac")
    assert created.algorithm == "HMAC-SHA256"
    made = capped.mac("tokens", b"session 42")
    assert isinstance(made, MACed) and made.version == 1
    assert "session" not in repr(made)
    for _ in range(3):
        capped.rotate_key("tokens")
    assert not capped.verify_mac("tokens", b"session 42", made.mac).valid
    assert capped.verify_mac("tokens", b"session 42", made.mac, version=1).valid
    assert not capped.verify_mac("tokens", b"session 42", made.mac, version=2).valid
    newest = capped.mac("tokens", b"session 42")
    assert newest.version == 4
    assert capped.verify_mac("tokens", b"session 42", newest.mac).version == 4


def test_mac_keys_are_only_for_mac(service: KMSService) -> None:
    service.create_key("tokens", "mac", "HMAC-SHA512")
    service.create_key("aes", "encrypt")
    with pytest.raises(PurposeMismatch):
        service.mac("aes", b"m")
    with pytest.raises(PurposeMismatch):
        service.verify_mac("aes", b"m", bytes(32))
    with pytest.raises(PurposeMismatch):
        service.encrypt("tokens", b"m")
    with pytest.raises(PurposeMismatch):
        service.public_key("tokens")
    with pytest.raises(PurposeMismatch):
        service.create_key("bad", "mac", "AES-256-GCM")
    # kms check unwraps and loads MAC keys like the others.
    assert service.check_integrity().failures == []
