"""The seed's whole key lifecycle over HTTPS, for each family of key kms offers."""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Any

import pytest

from tests.helpers.harness import (
    KMSClient,
    b64,
    create_key,
    expect_error,
    expect_json,
    expect_no_content,
    unb64,
    unique_key_id,
)

pytestmark = pytest.mark.slow

KEY_FIELDS = {
    "key_id",
    "purpose",
    "algorithm",
    "version",
    "created_at",
    # issue 8: states, metadata, version policy, scheduled deletion
    "state",
    "description",
    "labels",
    "min_decryption_version",
    "min_available_version",
    "deletion_allowed",
    "pending_deletion_at",
    "use_attempts_while_pending",
    "last_use_attempt",
    "rotation_period",
    "next_rotation_at",
    "max_encryptions_per_version",
}
VERSION_FIELDS = {"version", "created_at", "encryptions", "decryptions", "last_used_at"}


def assert_key(body: Any, key_id: str, purpose: str, algorithm: str, version: int) -> None:
    assert set(body) == KEY_FIELDS, body
    assert (body["key_id"], body["purpose"], body["algorithm"], body["version"]) == (
        key_id,
        purpose,
        algorithm,
        version,
    )
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None


def list_all_keys(client: KMSClient, page_size: int) -> list[dict[str, Any]]:
    """Walk GET /v1/kms/keys with ?limit=&after= until a short page."""
    keys: list[dict[str, Any]] = []
    params: dict[str, str | int] = {"limit": page_size}
    for _ in range(10_000):
        page = expect_json(client.get("/v1/kms/keys", params=params), 200)
        assert len(page) <= page_size
        keys += page
        if len(page) < page_size:
            return keys
        params["after"] = page[-1]["key_id"]
    pytest.fail("pagination never ended")


def get_key(client: KMSClient, key_id: str) -> dict[str, Any]:
    body = expect_json(client.get(f"/v1/kms/keys/{key_id}"), 200)
    assert set(body) == KEY_FIELDS | {"key_versions"}, body
    for entry in body["key_versions"]:
        assert set(entry) == VERSION_FIELDS
        assert datetime.fromisoformat(entry["created_at"]).tzinfo is not None
    return body


def versions_of(client: KMSClient, key_id: str) -> list[int]:
    return [entry["version"] for entry in get_key(client, key_id)["key_versions"]]


def rotate(client: KMSClient, key_id: str, purpose: str, algorithm: str, version: int) -> None:
    body = expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    assert_key(body, key_id, purpose, algorithm, version)


def recreate(client: KMSClient, key_id: str, purpose: str, algorithm: str) -> None:
    body = expect_json(client.post(f"/v1/kms/keys/{key_id}/recreate"), 201)
    assert_key(body, key_id, purpose, algorithm, 1)


def delete_and_confirm_gone(client: KMSClient, key_id: str) -> None:
    expect_no_content(client.delete(f"/v1/kms/keys/{key_id}"))
    gone = f'record not found: key "{key_id}"'
    expect_error(client.get(f"/v1/kms/keys/{key_id}"), 404, gone)
    expect_error(client.delete(f"/v1/kms/keys/{key_id}"), 404, gone)
    assert key_id not in {key["key_id"] for key in list_all_keys(client, 1000)}


def encrypt(client: KMSClient, key_id: str, plaintext: bytes, version: int) -> str:
    body = expect_json(
        client.post("/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(plaintext)}), 200
    )
    assert body == {"ciphertext": body["ciphertext"], "key_id": key_id, "version": version}
    assert unb64(body["ciphertext"]).startswith(f"v{version}:".encode())
    return body["ciphertext"]


def decrypt(client: KMSClient, key_id: str, ciphertext: str, version: int) -> bytes:
    body = expect_json(
        client.post("/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": ciphertext}), 200
    )
    assert set(body) == {"plaintext", "key_id", "version"}
    assert (body["key_id"], body["version"]) == (key_id, version)
    return unb64(body["plaintext"])


def sign(client: KMSClient, key_id: str, message: bytes, version: int) -> bytes:
    body = expect_json(
        client.post("/v1/kms/sign", json={"key_id": key_id, "message": b64(message)}), 200
    )
    assert set(body) == {"signature", "key_id", "version"}
    assert (body["key_id"], body["version"]) == (key_id, version)
    return unb64(body["signature"])


def verify(client: KMSClient, key_id: str, message: bytes, signature: bytes) -> dict[str, Any]:
    return expect_json(
        client.post(
            "/v1/kms/verify",
            json={"key_id": key_id, "message": b64(message), "signature": b64(signature)},
        ),
        200,
    )


def public_key(
    client: KMSClient, key_id: str, algorithm: str, version: int, query: int | None = None
) -> str:
    params = {} if query is None else {"version": query}
    body = expect_json(client.get(f"/v1/kms/keys/{key_id}/public-key", params=params), 200)
    assert set(body) == {"key_id", "version", "algorithm", "public_key"}
    assert (body["key_id"], body["version"], body["algorithm"]) == (key_id, version, algorithm)
    assert body["public_key"].startswith("-----BEGIN PUBLIC KEY-----\n")
    assert body["public_key"].endswith("-----END PUBLIC KEY-----\n")
    return body["public_key"]


VALID = {"valid": True}
INVALID = {"valid": False, "error": "signature invalid"}


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "ChaCha20-Poly1305"])
def test_encryption_key_lifecycle(client: KMSClient, algorithm: str) -> None:
    key_id = unique_key_id("life-enc")
    created = create_key(client, key_id=key_id, purpose="encrypt", algorithm=algorithm)
    assert_key(created, key_id, "encrypt", algorithm, 1)
    assert created in list_all_keys(client, 1000)
    detail = get_key(client, key_id)
    assert {name: detail[name] for name in KEY_FIELDS} == created
    assert versions_of(client, key_id) == [1]

    plaintext = os.urandom(100)
    v1_ciphertext = encrypt(client, key_id, plaintext, version=1)
    empty_ciphertext = encrypt(client, key_id, b"", version=1)

    rotate(client, key_id, "encrypt", algorithm, version=2)
    rotate(client, key_id, "encrypt", algorithm, version=3)
    assert get_key(client, key_id)["version"] == 3
    assert versions_of(client, key_id) == [1, 2, 3]

    # Old ciphertexts still decrypt under the version they name; new ones use the latest.
    assert decrypt(client, key_id, v1_ciphertext, version=1) == plaintext
    assert decrypt(client, key_id, empty_ciphertext, version=1) == b""
    v3_ciphertext = encrypt(client, key_id, plaintext, version=3)
    assert v3_ciphertext != v1_ciphertext
    assert decrypt(client, key_id, v3_ciphertext, version=3) == plaintext

    recreate(client, key_id, "encrypt", algorithm)
    assert versions_of(client, key_id) == [1]
    # A fresh version 1: the old key's ciphertexts, whatever their version, are gone for good.
    for old in (v1_ciphertext, v3_ciphertext):
        response = client.post("/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": old})
        expect_error(response, 400, "invalid ciphertext")
    new_ciphertext = encrypt(client, key_id, plaintext, version=1)
    assert decrypt(client, key_id, new_ciphertext, version=1) == plaintext

    delete_and_confirm_gone(client, key_id)


# One algorithm of each signing family: what differs between RSA sizes (key generation, the
# key and signature lengths) is the service's and the crypto layer's, tested there for every
# size (tests/service/test_service.py: sign, verify and the exported key's size); over HTTP the
# routes are the same, and a 4096-bit key pair made four times cost more than the rest here.
@pytest.mark.parametrize("algorithm", ["RSA-2048", "ECDSA-P256", "Ed25519"])
def test_signing_key_lifecycle(client: KMSClient, algorithm: str) -> None:
    key_id = unique_key_id("life-sign")
    created = create_key(client, key_id=key_id, purpose="sign", algorithm=algorithm)
    assert_key(created, key_id, "sign", algorithm, 1)
    assert created in list_all_keys(client, 1000)
    assert versions_of(client, key_id) == [1]

    message = os.urandom(64)
    v1_signature = sign(client, key_id, message, version=1)
    v1_public_key = public_key(client, key_id, algorithm, version=1)
    assert verify(client, key_id, message, v1_signature) == VALID
    assert verify(client, key_id, message + b"!", v1_signature) == INVALID

    rotate(client, key_id, "sign", algorithm, version=2)
    rotate(client, key_id, "sign", algorithm, version=3)
    assert versions_of(client, key_id) == [1, 2, 3]

    # The v1 signature still verifies; the v1 public key is still served, the latest is new.
    assert verify(client, key_id, message, v1_signature) == VALID
    assert verify(client, key_id, message[:-1], v1_signature) == INVALID
    assert public_key(client, key_id, algorithm, version=1, query=1) == v1_public_key
    v3_public_key = public_key(client, key_id, algorithm, version=3)
    assert v3_public_key != v1_public_key
    assert public_key(client, key_id, algorithm, version=3, query=3) == v3_public_key
    v3_signature = sign(client, key_id, message, version=3)
    assert verify(client, key_id, message, v3_signature) == VALID

    recreate(client, key_id, "sign", algorithm)
    assert versions_of(client, key_id) == [1]
    assert verify(client, key_id, message, v1_signature) == INVALID
    assert verify(client, key_id, message, v3_signature) == INVALID
    assert public_key(client, key_id, algorithm, version=1) not in (v1_public_key, v3_public_key)
    expect_error(
        client.get(f"/v1/kms/keys/{key_id}/public-key", params={"version": 2}),
        404,
        f'record not found: key "{key_id}" version 2',
    )

    delete_and_confirm_gone(client, key_id)


@pytest.mark.parametrize(
    ("fields", "purpose", "algorithm"),
    [
        ({"purpose": "encrypt"}, "encrypt", "AES-256-GCM"),
        ({"purpose": "sign"}, "sign", "ECDSA-P256"),
        ({}, "encrypt", "AES-256-GCM"),
    ],
    ids=["encrypt", "sign", "no-fields"],
)
def test_defaults_give_an_algorithm_and_a_uuid4_key_id(
    client: KMSClient, fields: dict[str, str], purpose: str, algorithm: str
) -> None:
    body = create_key(client, **fields)
    key_id = body["key_id"]
    assert str(uuid.UUID(key_id)) == key_id
    assert uuid.UUID(key_id).version == 4
    assert_key(body, key_id, purpose, algorithm, 1)
    delete_and_confirm_gone(client, key_id)


def test_list_is_ordered_by_key_id_and_pages_without_gaps(client: KMSClient) -> None:
    prefix = unique_key_id("list")
    # Created out of order; the list must come back sorted whatever the insertion order.
    mine = [f"{prefix}-{suffix}" for suffix in ("c", "a", "e", "b", "d")]
    for key_id in mine:
        create_key(client, key_id=key_id)

    whole = list_all_keys(client, 1000)
    ids = [key["key_id"] for key in whole]
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))
    assert [key_id for key_id in ids if key_id.startswith(prefix)] == sorted(mine)
    for page_size in (1, 2, 3):
        assert list_all_keys(client, page_size) == whole

    # ?after= is exclusive and need not name an existing key.
    page = expect_json(client.get("/v1/kms/keys", params={"limit": 2, "after": mine[1]}), 200)
    assert [key["key_id"] for key in page] == sorted(mine)[1:3]
    page = expect_json(client.get("/v1/kms/keys", params={"after": f"{prefix}-bb"}), 200)
    assert [key["key_id"] for key in page][:3] == sorted(mine)[2:]

    for key_id in mine:
        delete_and_confirm_gone(client, key_id)
