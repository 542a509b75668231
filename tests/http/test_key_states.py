"""Key states over real gunicorn mTLS: each route applies the state rules and answers a refusal
with its status and ``{"error": ...}``, and the key's JSON shows the state fields.

All on the package's one shared server, each test with key ids of its own. What the rules decide
(a trim destroys rows, a state is stored and not remembered by a worker, the window of a
scheduled deletion, ``destroy-due``, ``kms.deletion.min_pending_days``) is tested in process on
SQLite and PostgreSQL (tests/service/test_key_states.py, tests/unit/test_key_rules.py) and from
the command line (tests/system/test_destroy_due_command.py).
"""

from __future__ import annotations

from contextlib import closing
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests

from kms.store.records import utc_now
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
from tests.helpers.identities import IdentityClient, issue_client_certificate

pytestmark = pytest.mark.slow

DISABLED = "key is disabled"
PENDING = "key is pending deletion"
FENCED = "key version is below min_decryption_version"
#: A fenced version's ciphertext is answered like any other that does not decrypt
#: (tests/http/test_decryption_refusals.py).
INVALID = "invalid ciphertext"
NOT_ALLOWED = "deletion is not allowed for this key (deletion_allowed is false)"


def key_of(client: KMSClient, key_id: str) -> dict[str, Any]:
    return expect_json(client.get(f"/v1/kms/keys/{key_id}"), 200)


def encrypt(client: KMSClient, key_id: str, plaintext: bytes) -> str:
    body = {"key_id": key_id, "plaintext": b64(plaintext)}
    return expect_json(client.post("/v1/kms/encrypt", json=body), 200)["ciphertext"]


def decrypt_response(client: KMSClient, key_id: str, ciphertext: str) -> requests.Response:
    return client.post("/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": ciphertext})


def decrypt(client: KMSClient, key_id: str, ciphertext: str) -> bytes:
    return unb64(expect_json(decrypt_response(client, key_id, ciphertext), 200)["plaintext"])


def sign(client: KMSClient, key_id: str, message: bytes) -> str:
    body = {"key_id": key_id, "message": b64(message)}
    return expect_json(client.post("/v1/kms/sign", json=body), 200)["signature"]


def verify_response(
    client: KMSClient, key_id: str, message: bytes, signature: str
) -> requests.Response:
    body = {"key_id": key_id, "message": b64(message), "signature": signature}
    return client.post("/v1/kms/verify", json=body)


def patch(client: KMSClient, key_id: str, **fields: Any) -> requests.Response:
    return client.request("PATCH", f"/v1/kms/keys/{key_id}", json=fields)


def every_crypto_operation(
    client: KMSClient, enc: str, sig: str, ciphertext: str, signature: str
) -> list[requests.Response]:
    """One request of each cryptographic operation on the two keys."""
    return [
        client.post("/v1/kms/encrypt", json={"key_id": enc, "plaintext": b64(b"x")}),
        decrypt_response(client, enc, ciphertext),
        client.post("/v1/kms/sign", json={"key_id": sig, "message": b64(b"m")}),
        verify_response(client, sig, b"m", signature),
        client.get(f"/v1/kms/keys/{sig}/public-key"),
    ]


def test_a_disabled_key_is_refused_by_every_crypto_route_and_works_again_once_enabled(
    client: KMSClient,
) -> None:
    enc, sig = unique_key_id("dis-enc"), unique_key_id("dis-sig")
    assert create_key(client, key_id=enc)["state"] == "enabled"
    create_key(client, key_id=sig, purpose="sign", algorithm="Ed25519")
    ciphertext = encrypt(client, enc, b"before")
    signature = sign(client, sig, b"m")

    for key_id in (enc, sig):
        disabled = expect_json(client.post(f"/v1/kms/keys/{key_id}/disable"), 200)
        assert disabled["state"] == "disabled"
    for response in every_crypto_operation(client, enc, sig, ciphertext, signature):
        expect_error(response, 409, DISABLED)

    # Still readable and rotatable.
    assert key_of(client, enc)["state"] == "disabled"
    listed = expect_json(client.get("/v1/kms/keys", params={"state": "disabled"}), 200)
    assert {enc, sig} <= {key["key_id"] for key in listed}
    rotated = expect_json(client.post(f"/v1/kms/keys/{enc}/rotate"), 200)
    assert (rotated["version"], rotated["state"]) == (2, "disabled")

    for key_id in (enc, sig):
        assert expect_json(client.post(f"/v1/kms/keys/{key_id}/enable"), 200)["state"] == "enabled"
    for response in every_crypto_operation(client, enc, sig, ciphertext, signature):
        assert response.status_code == 200, response.text
    assert decrypt(client, enc, ciphertext) == b"before"
    assert encrypt(client, enc, b"after").startswith(b64(b"v2:")[:3])
    assert expect_json(verify_response(client, sig, b"m", signature), 200) == {"valid": True}


def test_metadata_at_create_and_patch_and_the_list_filters(client: KMSClient) -> None:
    team = unique_key_id("team")  # label values no other test uses
    env = unique_key_id("dev") + ":eu"
    a, b, c = (unique_key_id(name) for name in ("meta-a", "meta-b", "meta-c"))
    created = create_key(client, key_id=a, description="orders at rest", labels={"team": team})
    assert (created["description"], created["labels"]) == ("orders at rest", {"team": team})
    assert created["deletion_allowed"] is True
    assert (created["min_decryption_version"], created["pending_deletion_at"]) == (1, None)
    assert (created["use_attempts_while_pending"], created["last_use_attempt"]) == (0, None)
    create_key(client, key_id=b, labels={"team": team, "env": "prod"})
    create_key(client, key_id=c, labels={"team": "other"})

    changed = expect_json(
        patch(client, b, description="billing", labels={"team": team, "env": env}), 200
    )
    assert (changed["description"], changed["labels"]) == ("billing", {"env": env, "team": team})
    assert key_of(client, b)["labels"] == {"env": env, "team": team}

    def listed(**params: str) -> list[str]:
        body = expect_json(client.get("/v1/kms/keys", params=params), 200)
        return [key["key_id"] for key in body]

    assert listed(label=f"team:{team}") == sorted([a, b])
    assert listed(label=f"env:{env}") == [b]  # the value may hold colons
    assert listed(label=f"team:{team}", limit="1") == [min(a, b)]
    assert listed(label=f"team:{team}", limit="1", after=min(a, b)) == [max(a, b)]
    expect_json(client.post(f"/v1/kms/keys/{a}/disable"), 200)
    assert listed(label=f"team:{team}", state="disabled") == [a]
    assert listed(label=f"team:{team}", state="enabled") == [b]


def test_the_decryption_fence_and_trim_over_patch_trim_and_decrypt(client: KMSClient) -> None:
    key_id = unique_key_id("fence")
    create_key(client, key_id=key_id)
    ciphertexts = [encrypt(client, key_id, b"under v1")]
    for version in (2, 3):
        expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
        ciphertexts.append(encrypt(client, key_id, f"under v{version}".encode()))

    fenced = expect_json(patch(client, key_id, min_decryption_version=2), 200)
    assert fenced["min_decryption_version"] == 2
    expect_error(decrypt_response(client, key_id, ciphertexts[0]), 400, INVALID)
    assert decrypt(client, key_id, ciphertexts[1]) == b"under v2"
    expect_error(
        patch(client, key_id, min_decryption_version=4),
        400,
        "min_decryption_version must be from 1 (the oldest version kept) to 3 (the latest version)",
    )
    expect_error(
        client.post(f"/v1/kms/keys/{key_id}/trim", json={"min_available_version": 3}),
        409,
        "min_available_version must not exceed min_decryption_version (2); raise that first",
    )
    trimmed = expect_json(
        client.post(f"/v1/kms/keys/{key_id}/trim", json={"min_available_version": 2}), 200
    )
    assert (trimmed["min_available_version"], trimmed["version"]) == (2, 3)
    versions = expect_json(client.get(f"/v1/kms/keys/{key_id}/versions"), 200)
    assert [v["version"] for v in versions] == [2, 3]
    assert decrypt(client, key_id, ciphertexts[2]) == b"under v3"
    expect_error(decrypt_response(client, key_id, ciphertexts[0]), 400, INVALID)


def test_the_decryption_fence_over_verify_and_the_public_key(client: KMSClient) -> None:
    key_id = unique_key_id("fence-sig")
    create_key(client, key_id=key_id, purpose="sign", algorithm="ECDSA-P256")
    old = sign(client, key_id, b"m")
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    new = sign(client, key_id, b"m")

    expect_json(patch(client, key_id, min_decryption_version=2), 200)
    expect_error(verify_response(client, key_id, b"m", old), 409, FENCED)
    assert expect_json(verify_response(client, key_id, b"m", new), 200) == {"valid": True}
    expect_error(client.get(f"/v1/kms/keys/{key_id}/public-key?version=1"), 409, FENCED)
    expect_json(client.get(f"/v1/kms/keys/{key_id}/public-key?version=2"), 200)


def test_deletion_allowed_false_refuses_delete_and_recreate(client: KMSClient) -> None:
    key_id = unique_key_id("keep")
    create_key(client, key_id=key_id)
    ciphertext = encrypt(client, key_id, b"one")
    changed = expect_json(patch(client, key_id, deletion_allowed=False), 200)
    assert changed["deletion_allowed"] is False

    expect_error(client.delete(f"/v1/kms/keys/{key_id}"), 409, NOT_ALLOWED)
    expect_error(client.delete(f"/v1/kms/keys/{key_id}?pending_days=7"), 409, NOT_ALLOWED)
    expect_error(client.post(f"/v1/kms/keys/{key_id}/recreate"), 409, NOT_ALLOWED)
    assert key_of(client, key_id)["state"] == "enabled"
    assert decrypt(client, key_id, ciphertext) == b"one"

    expect_json(patch(client, key_id, deletion_allowed=True), 200)
    expect_no_content(client.delete(f"/v1/kms/keys/{key_id}"))
    expect_error(client.get(f"/v1/kms/keys/{key_id}"), 404, f'record not found: key "{key_id}"')


def test_a_pending_key_refuses_every_route_but_reading_and_cancel_and_names_its_caller(
    client: KMSClient,
) -> None:
    key_id, sig = unique_key_id("pending"), unique_key_id("pending-sig")
    create_key(client, key_id=key_id)
    create_key(client, key_id=sig, purpose="sign", algorithm="Ed25519")
    ciphertext = encrypt(client, key_id, b"one")
    signature = sign(client, sig, b"m")

    asked_at = utc_now()
    scheduled = expect_json(client.delete(f"/v1/kms/keys/{key_id}?pending_days=7"), 200)
    expect_json(client.delete(f"/v1/kms/keys/{sig}?pending_days=30"), 200)
    assert scheduled["state"] == "pending_deletion"
    due = datetime.fromisoformat(scheduled["pending_deletion_at"])
    assert asked_at + timedelta(days=7) <= due <= utc_now() + timedelta(days=7)

    # Another service, with its own certificate, still calls the keys: the attempt records the
    # caller its certificate names and the operation of the route.
    cert, private_key = issue_client_certificate(client.deployment, "billing", "billing-service")
    with closing(IdentityClient(client.deployment, cert, private_key)) as billing:
        for response in every_crypto_operation(billing, key_id, sig, ciphertext, signature):
            expect_error(response, 409, PENDING)
        expect_error(decrypt_response(billing, key_id, ciphertext), 409, PENDING)
    pending = key_of(client, key_id)
    assert pending["use_attempts_while_pending"] == 3  # encrypt, decrypt, decrypt
    attempt = pending["last_use_attempt"]
    assert (attempt["caller"], attempt["operation"]) == ("cn:billing-service", "decrypt")
    assert asked_at <= datetime.fromisoformat(attempt["at"]) <= utc_now()
    signing = key_of(client, sig)
    assert signing["use_attempts_while_pending"] == 3  # sign, verify, public key
    assert signing["last_use_attempt"]["operation"] == "keys:read"

    # Nothing but reading and cancelling is allowed while pending.
    for response in (
        client.post(f"/v1/kms/keys/{key_id}/rotate"),
        client.post(f"/v1/kms/keys/{key_id}/enable"),
        client.post(f"/v1/kms/keys/{key_id}/disable"),
        client.post(f"/v1/kms/keys/{key_id}/recreate"),
        patch(client, key_id, description="x"),
        client.delete(f"/v1/kms/keys/{key_id}?pending_days=1"),
        client.delete(f"/v1/kms/keys/{key_id}"),
    ):
        expect_error(response, 409, PENDING)
    listed = expect_json(client.get("/v1/kms/keys", params={"state": "pending_deletion"}), 200)
    assert {key_id, sig} <= {key["key_id"] for key in listed}

    cancelled = expect_json(client.post(f"/v1/kms/keys/{key_id}/cancel-deletion"), 200)
    assert (cancelled["state"], cancelled["pending_deletion_at"]) == ("disabled", None)
    assert cancelled["use_attempts_while_pending"] == 3  # kept for the operator
    expect_error(decrypt_response(client, key_id, ciphertext), 409, DISABLED)
