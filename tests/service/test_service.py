"""KMSService over a real SQLite file: round trips for every algorithm and the lifecycle rules."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kms.crypto.algorithms import ENCRYPTION_ALGORITHMS, SIGNING_ALGORITHMS
from kms.crypto.ciphertext import parse_ciphertext
from kms.errors import (
    InvalidCiphertext,
    InvalidRequest,
    KeyExists,
    KeyNotFound,
    PurposeMismatch,
)
from kms.service.keys import KMSService, Verified
from kms.service.keys.validation import MAX_PAGE_SIZE
from tests.helpers.keystore import MAX_TEST_PLAINTEXT, plaintexts

KEY_TYPES = {
    "RSA-2048": rsa.RSAPublicKey,
    "RSA-3072": rsa.RSAPublicKey,
    "RSA-4096": rsa.RSAPublicKey,
    "ECDSA-P256": ec.EllipticCurvePublicKey,
    "ECDSA-P384": ec.EllipticCurvePublicKey,
    "Ed25519": ed25519.Ed25519PublicKey,
}


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", sorted(ENCRYPTION_ALGORITHMS))
def test_encrypt_decrypt_round_trip(service: KMSService, algorithm: str) -> None:
    created = service.create_key("data-key", "encrypt", algorithm)
    assert (created.purpose, created.algorithm, created.version) == ("encrypt", algorithm, 1)
    for plaintext, context in [
        (b"", {}),
        (b"attack at dawn", {}),
        (b"attack at dawn", {"tenant": "42"}),
        (os.urandom(MAX_TEST_PLAINTEXT), {"size": "large"}),
    ]:
        encrypted = service.encrypt("data-key", plaintext, context)
        assert (encrypted.key_id, encrypted.version) == ("data-key", 1)
        assert parse_ciphertext(encrypted.ciphertext).version == 1
        decrypted = service.decrypt("data-key", encrypted.ciphertext, context)
        assert (decrypted.plaintext, decrypted.version) == (plaintext, 1)
        # The encryption context is bound in: decrypting without it (or with another) fails.
        with pytest.raises(InvalidCiphertext):
            service.decrypt("data-key", encrypted.ciphertext, {**context, "": "!"})


def test_two_encryptions_of_one_plaintext_differ(service: KMSService) -> None:
    service.create_key("data-key")
    first = service.encrypt("data-key", b"same").ciphertext
    second = service.encrypt("data-key", b"same").ciphertext
    assert first != second


@pytest.mark.parametrize("algorithm", sorted(SIGNING_ALGORITHMS))
def test_sign_verify_round_trip(service: KMSService, algorithm: str) -> None:
    created = service.create_key("signing-key", "sign", algorithm)
    assert (created.purpose, created.algorithm) == ("sign", algorithm)
    message = b"pay 100 to alice"
    signed = service.sign("signing-key", message)
    assert (signed.key_id, signed.version) == ("signing-key", 1)
    assert service.verify("signing-key", message, signed.signature) == Verified(
        key_id="signing-key", valid=True, version=1
    )
    assert not service.verify("signing-key", b"pay 900 to alice", signed.signature).valid
    tampered = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    assert not service.verify("signing-key", message, tampered).valid
    assert not service.verify("signing-key", message, b"").valid
    exported = service.public_key("signing-key")
    assert (exported.version, exported.algorithm) == (1, algorithm)
    public_key = serialization.load_pem_public_key(exported.public_key.encode("ascii"))
    assert isinstance(public_key, KEY_TYPES[algorithm])
    if isinstance(public_key, rsa.RSAPublicKey):
        assert public_key.key_size == int(algorithm.removeprefix("RSA-"))


# -- hypothesis round trips through one module-wide keystore ------------------------------------


@pytest.fixture(scope="module")
def round_trip_keys(module_service: KMSService) -> Iterator[KMSService]:
    for algorithm in ENCRYPTION_ALGORITHMS:
        module_service.create_key(f"round-trip-{algorithm}", "encrypt", algorithm)
    yield module_service


@pytest.mark.parametrize("algorithm", sorted(ENCRYPTION_ALGORITHMS))
@settings(max_examples=50, deadline=None)
@given(
    plaintext=plaintexts(),
    context=st.dictionaries(st.text(max_size=16), st.text(max_size=16), max_size=8),
)
@example(plaintext=b"", context={})
@example(plaintext=bytes(MAX_TEST_PLAINTEXT), context={})
def test_service_round_trips_any_plaintext(
    round_trip_keys: KMSService, algorithm: str, plaintext: bytes, context: dict[str, str]
) -> None:
    key_id = f"round-trip-{algorithm}"
    ciphertext = round_trip_keys.encrypt(key_id, plaintext, context).ciphertext
    assert round_trip_keys.decrypt(key_id, ciphertext, context).plaintext == plaintext


# -- creation --------------------------------------------------------------------------------


def test_create_with_a_client_key_id(service: KMSService) -> None:
    created = service.create_key("Tenant_1.payments-key")
    assert created.key_id == "Tenant_1.payments-key"
    assert (created.purpose, created.algorithm, created.version) == ("encrypt", "AES-256-GCM", 1)
    assert service.get_key("Tenant_1.payments-key").key_id == "Tenant_1.payments-key"


def test_create_without_a_key_id_generates_a_uuid4(service: KMSService) -> None:
    first = service.create_key()
    second = service.create_key(purpose="sign")
    for created in (first, second):
        assert uuid.UUID(created.key_id).version == 4
        assert str(uuid.UUID(created.key_id)) == created.key_id
    assert first.key_id != second.key_id
    assert second.algorithm == "ECDSA-P256"


@pytest.mark.parametrize(
    "key_id",
    [
        pytest.param("../x", id="path-traversal"),
        pytest.param("a/b", id="slash"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param("key\n", id="trailing-newline"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("-flag", id="leading-dash"),
        pytest.param("", id="empty"),
        pytest.param("k\u00e9y", id="non-ascii"),
        pytest.param("key id", id="space"),
    ],
)
def test_invalid_key_ids_are_refused_everywhere(service: KMSService, key_id: str) -> None:
    operations: list[Callable[[], object]] = [
        lambda: service.create_key(key_id),
        lambda: service.get_key(key_id),
        lambda: service.encrypt(key_id, b"x"),
        lambda: service.decrypt(key_id, "djE6"),
        lambda: service.sign(key_id, b"x"),
        lambda: service.verify(key_id, b"x", b"x"),
        lambda: service.rotate_key(key_id),
        lambda: service.recreate_key(key_id),
        lambda: service.delete_key(key_id),
        lambda: service.list_keys(after=key_id),
    ]
    for operation in operations:
        with pytest.raises(InvalidRequest) as excinfo:
            operation()
        assert excinfo.type is InvalidRequest
    assert service.list_keys() == []


def test_the_longest_key_id_is_accepted(service: KMSService) -> None:
    assert service.create_key("a" * 128).key_id == "a" * 128


def test_a_duplicate_key_id_is_refused(service: KMSService) -> None:
    service.create_key("dup", "encrypt")
    with pytest.raises(KeyExists):
        service.create_key("dup", "sign")
    assert service.get_key("dup").purpose == "encrypt"


@pytest.mark.parametrize(
    ("purpose", "algorithm"),
    [("sign", "AES-256-GCM"), ("sign", "ChaCha20-Poly1305"), ("encrypt", "Ed25519")],
)
def test_an_algorithm_of_the_other_purpose_is_refused(
    service: KMSService, purpose: str, algorithm: str
) -> None:
    with pytest.raises(PurposeMismatch) as excinfo:
        service.create_key("mismatch", purpose, algorithm)
    assert isinstance(excinfo.value, InvalidRequest)  # so the API answers 400
    with pytest.raises(KeyNotFound):
        service.get_key("mismatch")


@pytest.mark.parametrize(
    ("purpose", "algorithm"),
    [
        ("encrypt", "AES-128-GCM"),
        ("encrypt", "aes-256-gcm"),
        ("sign", "RSA-1024"),
        ("wrap", None),
        ("ENCRYPT", None),
        ("", "AES-256-GCM"),
    ],
)
def test_an_unknown_algorithm_or_purpose_is_refused(
    service: KMSService, purpose: str, algorithm: str | None
) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        service.create_key("unknown", purpose, algorithm)
    assert excinfo.type is InvalidRequest
    assert service.list_keys() == []


def test_operations_must_fit_the_key_purpose(service: KMSService) -> None:
    service.create_key("enc", "encrypt")
    service.create_key("sig", "sign", "Ed25519")
    ciphertext = service.encrypt("enc", b"x").ciphertext
    signature = service.sign("sig", b"x").signature
    for operation in [
        lambda: service.encrypt("sig", b"x"),
        lambda: service.decrypt("sig", ciphertext),
        lambda: service.sign("enc", b"x"),
        lambda: service.verify("enc", b"x", signature),
        lambda: service.public_key("enc"),
    ]:
        with pytest.raises(PurposeMismatch):
            operation()


def test_operations_on_an_unknown_key_raise_key_not_found(service: KMSService) -> None:
    for operation in [
        lambda: service.get_key("missing"),
        lambda: service.encrypt("missing", b"x"),
        lambda: service.decrypt("missing", "djE6"),
        lambda: service.sign("missing", b"x"),
        lambda: service.verify("missing", b"x", b"x"),
        lambda: service.public_key("missing"),
        lambda: service.rotate_key("missing"),
        lambda: service.recreate_key("missing"),
        lambda: service.delete_key("missing"),
    ]:
        with pytest.raises(KeyNotFound):
            operation()


# -- listing ---------------------------------------------------------------------------------


def test_list_pages_in_key_id_order(service: KMSService) -> None:
    # Created out of order, with ids whose byte order differs from a case-insensitive order.
    ids = ["b", "a", "C", "a-2", "c", "0"]
    for key_id in ids:
        service.create_key(key_id)
    expected = sorted(ids)
    assert [key.key_id for key in service.list_keys()] == expected
    pages: list[list[str]] = []
    after: str | None = None
    while page := [key.key_id for key in service.list_keys(limit=2, after=after)]:
        pages.append(page)
        after = page[-1]
    assert pages == [expected[0:2], expected[2:4], expected[4:6]]
    assert [key.key_id for key in service.list_keys(limit=1)] == [expected[0]]
    assert [key.key_id for key in service.list_keys(limit=MAX_PAGE_SIZE, after="b")] == ["c"]
    assert service.list_keys(after="zzz") == []


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1, True, False, 1.0, "10", None])
def test_list_refuses_a_bad_limit(service: KMSService, limit: object) -> None:
    with pytest.raises(InvalidRequest):
        service.list_keys(limit=limit)  # type: ignore[arg-type]


# -- rotation, recreation, deletion -----------------------------------------------------------


def test_rotate_adds_a_version_and_old_ciphertexts_still_decrypt(service: KMSService) -> None:
    service.create_key("rotating", "encrypt", "ChaCha20-Poly1305")
    old = service.encrypt("rotating", b"old secret").ciphertext
    rotated = service.rotate_key("rotating")
    assert rotated.version == 2
    new = service.encrypt("rotating", b"new secret")
    assert new.version == 2
    assert service.decrypt("rotating", old).plaintext == b"old secret"
    assert service.decrypt("rotating", old).version == 1
    assert service.decrypt("rotating", new.ciphertext).plaintext == b"new secret"
    assert [v.version for v in service.get_key("rotating").key_versions] == [1, 2]
    assert service.get_key("rotating").version == 2


def test_verify_accepts_signatures_of_older_versions(service: KMSService) -> None:
    service.create_key("signer", "sign", "ECDSA-P256")
    first = service.sign("signer", b"message")
    service.rotate_key("signer")
    second = service.sign("signer", b"message")
    assert (first.version, second.version) == (1, 2)
    assert service.verify("signer", b"message", first.signature) == Verified("signer", True, 1)
    assert service.verify("signer", b"message", second.signature) == Verified("signer", True, 2)
    assert service.verify("signer", b"other", first.signature) == Verified("signer", False, None)
    assert service.public_key("signer", 1).public_key != service.public_key("signer").public_key
    with pytest.raises(KeyNotFound):
        service.public_key("signer", 3)


def test_recreate_starts_at_version_1_with_fresh_material(service: KMSService) -> None:
    service.create_key("recreated", "encrypt")
    service.rotate_key("recreated")
    old_v2 = service.encrypt("recreated", b"x").ciphertext
    service.rotate_key("recreated")
    recreated = service.recreate_key("recreated")
    assert recreated.version == 1
    assert [v.version for v in service.get_key("recreated").key_versions] == [1]
    with pytest.raises(InvalidCiphertext):
        service.decrypt("recreated", old_v2)
    # A version-1 ciphertext of the old material has the same label as the new version 1.
    service.recreate_key("recreated")
    before = service.encrypt("recreated", b"y").ciphertext
    service.recreate_key("recreated")
    with pytest.raises(InvalidCiphertext):
        service.decrypt("recreated", before)
    fresh = service.encrypt("recreated", b"z").ciphertext
    assert service.decrypt("recreated", fresh).plaintext == b"z"


def test_recreate_gives_a_signing_key_a_new_key_pair(service: KMSService) -> None:
    service.create_key("recreated-signer", "sign", "Ed25519")
    old_public = service.public_key("recreated-signer").public_key
    old_signature = service.sign("recreated-signer", b"m").signature
    service.recreate_key("recreated-signer")
    assert service.public_key("recreated-signer").public_key != old_public
    assert not service.verify("recreated-signer", b"m", old_signature).valid


def test_delete_makes_the_key_not_found(service: KMSService) -> None:
    service.create_key("doomed")
    ciphertext = service.encrypt("doomed", b"x").ciphertext
    service.delete_key("doomed")
    with pytest.raises(KeyNotFound):
        service.get_key("doomed")
    with pytest.raises(KeyNotFound):
        service.decrypt("doomed", ciphertext)
    with pytest.raises(KeyNotFound):
        service.delete_key("doomed")
    assert service.list_keys() == []


def test_another_worker_sees_delete_and_recreate(
    service: KMSService, service_factory: Callable[[], KMSService]
) -> None:
    # The other worker has the key's material cached before this one changes the key.
    other = service_factory()
    service.create_key("shared", "encrypt")
    old = other.encrypt("shared", b"old").ciphertext
    assert other.decrypt("shared", old).plaintext == b"old"

    service.delete_key("shared")
    with pytest.raises(KeyNotFound):
        other.encrypt("shared", b"x")
    with pytest.raises(KeyNotFound):
        other.decrypt("shared", old)

    # The same key_id again: version 1 again, but new material the old ciphertext must not open.
    service.create_key("shared", "encrypt")
    with pytest.raises(InvalidCiphertext):
        other.decrypt("shared", old)
    from_other = other.encrypt("shared", b"new").ciphertext
    assert service.decrypt("shared", from_other).plaintext == b"new"

    # The same through recreate: the other worker must not keep using what it cached.
    before_recreate = other.encrypt("shared", b"before").ciphertext
    service.recreate_key("shared")
    with pytest.raises(InvalidCiphertext):
        other.decrypt("shared", before_recreate)
    after_recreate = other.encrypt("shared", b"after").ciphertext
    assert service.decrypt("shared", after_recreate).plaintext == b"after"


def test_another_worker_signs_with_the_recreated_key(
    service: KMSService, service_factory: Callable[[], KMSService]
) -> None:
    other = service_factory()
    service.create_key("shared-signer", "sign", "ECDSA-P256")
    other.sign("shared-signer", b"warm the cache")
    service.recreate_key("shared-signer")
    signature = other.sign("shared-signer", b"m").signature
    assert service.verify("shared-signer", b"m", signature) == Verified("shared-signer", True, 1)
