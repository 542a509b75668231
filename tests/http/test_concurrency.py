"""Concurrent rotations and encryptions on one key, across both gunicorn workers."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.helpers.harness import (
    KMSClient,
    b64,
    create_key,
    expect_json,
    expect_no_content,
    unb64,
    unique_key_id,
)

pytestmark = pytest.mark.slow

THREADS = 16
REQUESTS = 100
ROTATE_EVERY = 4  # 25 rotations and 75 encryptions, interleaved


def test_rotate_and_encrypt_concurrently(client: KMSClient) -> None:
    key_id = unique_key_id("concurrent")
    create_key(client, key_id=key_id, purpose="encrypt", algorithm="AES-256-GCM")

    local = threading.local()
    sessions: list[requests.Session] = []
    sessions_lock = threading.Lock()

    def session() -> requests.Session:
        """Each thread its own session, and so its own keep-alive connection."""
        if not hasattr(local, "session"):
            local.session = client.new_session()
            with sessions_lock:
                sessions.append(local.session)
        return local.session

    def operate(index: int) -> tuple[str, Any, bytes]:
        if index % ROTATE_EVERY == 0:
            response = client.post(f"/v1/kms/keys/{key_id}/rotate", session=session())
            return "rotate", expect_json(response, 200), b""
        plaintext = os.urandom(16) + index.to_bytes(4, "big")
        response = client.post(
            "/v1/kms/encrypt",
            session=session(),
            json={"key_id": key_id, "plaintext": b64(plaintext)},
        )
        return "encrypt", expect_json(response, 200), plaintext

    def decrypt(item: tuple[dict[str, Any], bytes]) -> tuple[int, bytes]:
        encrypted, _ = item
        response = client.post(
            "/v1/kms/decrypt",
            session=session(),
            json={"key_id": key_id, "ciphertext": encrypted["ciphertext"]},
        )
        body = expect_json(response, 200)
        return body["version"], unb64(body["plaintext"])

    try:
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            results = list(pool.map(operate, range(REQUESTS)))
            encryptions = [(body, plain) for kind, body, plain in results if kind == "encrypt"]
            decryptions = list(pool.map(decrypt, encryptions))
    finally:
        for each in sessions:
            each.close()

    rotations = [body for kind, body, _ in results if kind == "rotate"]
    assert len(rotations) == REQUESTS // ROTATE_EVERY
    # Every rotation got its own version number: none lost, none handed out twice.
    assert sorted(body["version"] for body in rotations) == list(range(2, 2 + len(rotations)))
    detail = expect_json(client.get(f"/v1/kms/keys/{key_id}"), 200)
    assert detail["version"] == 1 + len(rotations)
    assert [entry["version"] for entry in detail["key_versions"]] == list(
        range(1, 2 + len(rotations))
    )

    for (encrypted, plaintext), (version, decrypted) in zip(encryptions, decryptions, strict=True):
        assert encrypted["key_id"] == key_id
        assert 1 <= encrypted["version"] <= 1 + len(rotations)
        assert unb64(encrypted["ciphertext"]).startswith(f"v{encrypted['version']}:".encode())
        assert (version, decrypted) == (encrypted["version"], plaintext)

    expect_no_content(client.delete(f"/v1/kms/keys/{key_id}"))
