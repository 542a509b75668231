"""Every decryption failure gets the same answer over real gunicorn mTLS (docs/security.md).

A ciphertext of a version fenced off by ``min_decryption_version``, a forgery that names such a
version, a tampered ciphertext of a version still in use and one naming a version that never
existed are all answered 400 ``{"error": "invalid ciphertext"}``, byte for byte alike, in a
single call, a rewrap and a batch: the fence is checked only after the ciphertext authenticates,
so a client learns neither where the fence stands nor whether its forgery names a real version.
The operator still sees which it was: the audit line counts ``fenced_ciphertexts`` (with their
``fenced_versions``) apart from ``invalid_ciphertexts``, and so does
``kms_decryptions_refused_total{reason}``.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.harness import (
    Deployment,
    KMSClient,
    b64,
    create_key,
    expect_json,
    unb64,
    unique_key_id,
)
from tests.helpers.identities import audit_records

pytestmark = pytest.mark.slow

INVALID = b'{"error":"invalid ciphertext"}'
REFUSED = "kms_decryptions_refused"


def encrypt(client: KMSClient, key_id: str, plaintext: bytes) -> str:
    body = {"key_id": key_id, "plaintext": b64(plaintext)}
    return expect_json(client.post("/v1/kms/encrypt", json=body), 200)["ciphertext"]


def tampered(ciphertext: str) -> str:
    raw = bytearray(base64.b64decode(ciphertext))
    raw[-1] ^= 1  # a bit of the tag
    return base64.b64encode(bytes(raw)).decode("ascii")


def forged(version: int) -> str:
    """What someone without the key can send: a version prefix, then a random nonce, ciphertext
    and tag."""
    return base64.b64encode(b"v%d:" % version + os.urandom(12 + 16 + 16)).decode("ascii")


def answer_line(deployment: Deployment, response: requests.Response) -> dict[str, Any]:
    # The audit line is written before the answer is sent: no wait.
    request_id = response.headers["X-Request-Id"]
    [line] = [
        record
        for record in audit_records(deployment)
        if record["type"] == "response" and record["request_id"] == request_id
    ]
    return line


def refusal_counts(client: KMSClient) -> tuple[float, float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    counts = {
        point.labels["reason"]: point.value
        for family in text_string_to_metric_families(response.text)
        if family.name == REFUSED
        for point in family.samples
        if point.name == f"{REFUSED}_total"
    }
    return counts.get("fenced", 0.0), counts.get("invalid", 0.0)


def test_every_decryption_failure_gets_the_same_answer(
    client: KMSClient, deployment: Deployment
) -> None:
    key_id = unique_key_id("fenced")
    create_key(client, key_id=key_id)
    genuine_v1 = encrypt(client, key_id, b"made before the fence")
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    genuine_v2 = encrypt(client, key_id, b"made after the rotation")
    fence = {"min_decryption_version": 2}
    expect_json(client.request("PATCH", f"/v1/kms/keys/{key_id}", json=fence), 200)
    fenced_before, invalid_before = refusal_counts(client)

    cases = {
        "a genuine ciphertext of the fenced version": genuine_v1,
        "a forgery naming the fenced version": forged(1),
        "a tampered genuine ciphertext of the fenced version": tampered(genuine_v1),
        "a tampered ciphertext of the version in use": tampered(genuine_v2),
        "a forgery naming the version in use": forged(2),
        "a forgery naming a version that never existed": forged(9),
    }
    answers = {}
    for case, ciphertext in cases.items():
        body = {"key_id": key_id, "ciphertext": ciphertext}
        answers[case] = client.post("/v1/kms/decrypt", json=body)
    for case, response in answers.items():
        assert (response.status_code, response.content.strip()) == (400, INVALID), case
        assert response.headers["Content-Type"] == "application/json", case
        assert response.headers["Content-Length"] == str(len(response.content)), case
    rewrapped = client.post("/v1/kms/rewrap", json={"key_id": key_id, "ciphertext": genuine_v1})
    assert (rewrapped.status_code, rewrapped.content.strip()) == (400, INVALID)

    batch = [genuine_v1, forged(1), tampered(genuine_v2), genuine_v2]
    response = client.post(
        "/v1/kms/decrypt",
        json={"key_id": key_id, "batch": [{"ciphertext": item} for item in batch]},
    )
    results = expect_json(response, 200)["results"]
    assert results[:3] == [{"error": "invalid ciphertext"}] * 3
    assert unb64(results[3]["plaintext"]) == b"made after the rotation"

    # The operator is told which was which.
    genuine_line = answer_line(deployment, answers["a genuine ciphertext of the fenced version"])
    assert genuine_line["status"] == 400
    assert (genuine_line["fenced_ciphertexts"], genuine_line["fenced_versions"]) == (1, [1])
    assert "invalid_ciphertexts" not in genuine_line
    for case in cases:
        if case == "a genuine ciphertext of the fenced version":
            continue
        line = answer_line(deployment, answers[case])
        assert line["invalid_ciphertexts"] == 1, case
        assert "fenced_ciphertexts" not in line and "fenced_versions" not in line, case
    assert answer_line(deployment, rewrapped)["fenced_versions"] == [1]
    batch_line = answer_line(deployment, response)
    assert (batch_line["fenced_ciphertexts"], batch_line["fenced_versions"]) == (1, [1])
    assert batch_line["invalid_ciphertexts"] == 2
    # Nothing in the audit log comes from the ciphertexts.
    text = deployment.audit_log.read_text("utf-8")
    assert genuine_v1 not in text and "made before the fence" not in text

    fenced_after, invalid_after = refusal_counts(client)
    assert fenced_after - fenced_before == 3  # the single call, the rewrap, the batch item
    assert invalid_after - invalid_before == len(cases) - 1 + 2

    # Lowering the fence again: the genuine ciphertext decrypts, so it was never destroyed.
    expect_json(
        client.request("PATCH", f"/v1/kms/keys/{key_id}", json={"min_decryption_version": 1}),
        200,
    )
    again = client.post("/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": genuine_v1})
    assert unb64(expect_json(again, 200)["plaintext"]) == b"made before the fence"
