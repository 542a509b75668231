"""What the benchmark sends: the scenarios' names and their requests, encoded once up front.

The hot scenarios use three keys the run makes through the API (as a client would); the cold-key
scenario names the seeded keys; the floor scenarios send the ``encrypt_256`` request to servers
that are not kms (``bench.floor``), so that the cost of each layer shows beside the operations.
"""

from __future__ import annotations

import base64
import json
import os
import random
from dataclasses import dataclass

from bench.load import BenchError, Client, encode_request, request_once
from bench.seed import cold_key_id

HOT_AES = "bench-hot-aes"
HOT_P256 = "bench-hot-p256"
HOT_ED25519 = "bench-hot-ed25519"

BASELINE = "baseline_healthz"
#: The floors: the same request as ``encrypt_256`` to a bare WSGI callable and to a Flask app
#: with one ``jsonify`` route, each on kms's own worker, TLS and gunicorn settings.
FLOOR_WSGI = "floor_bare_wsgi"
FLOOR_FLASK = "floor_flask_jsonify"
#: A floor's scenario name and the WSGI application (gunicorn's ``module:name``) it serves.
FLOORS = ((FLOOR_WSGI, "bench.floor:bare_wsgi"), (FLOOR_FLASK, "bench.floor:flask_app"))
#: What a ``--backend both`` run measures again on the pkcs11 backend: the no-op and the hot
#: symmetric operations, whose ratio pkcs11 / passphrase should be 1 (no request calls the HSM).
BACKEND_SCENARIOS = frozenset({BASELINE, "encrypt_256", "decrypt_256"})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def post(path: str, document: object, *, keep_alive: bool = True) -> bytes:
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return encode_request("POST", "/v1/kms" + path, body, keep_alive=keep_alive)


def call(client: Client, path: str, document: object, expect: tuple[int, ...] = (200,)) -> dict:
    status, body = request_once(client, post(path, document))
    if status not in expect:
        raise BenchError(f"set-up POST {path} answered {status}: {body[:300]!r}")
    return json.loads(body)


@dataclass(frozen=True)
class Scenario:
    name: str
    requests: list[bytes]
    items: int = 1
    keep_alive: bool = True
    expect: bytes = b""


def small_encrypt_request() -> bytes:
    """``encrypt_256``'s request (a random 256-byte plaintext), which the floors get too."""
    return post("/encrypt", {"key_id": HOT_AES, "plaintext": b64(os.urandom(256))})


def floor_scenario(name: str) -> Scenario:
    return Scenario(name, [small_encrypt_request()], expect=b'"ok":true')


def hot_scenarios(client: Client) -> list[Scenario]:
    """Make the hot keys (through the API, as a client would) and the requests that use them."""
    for key_id, purpose, algorithm in (
        (HOT_AES, "encrypt", "AES-256-GCM"),
        (HOT_P256, "sign", "ECDSA-P256"),
        (HOT_ED25519, "sign", "Ed25519"),
    ):
        call(
            client,
            "/keys",
            {"key_id": key_id, "purpose": purpose, "algorithm": algorithm},
            expect=(200, 201, 409),
        )
    small = os.urandom(256)
    ciphertext = call(client, "/encrypt", {"key_id": HOT_AES, "plaintext": b64(small)})
    signature = call(client, "/sign", {"key_id": HOT_P256, "message": b64(small)})
    verified = call(
        client,
        "/verify",
        {"key_id": HOT_P256, "message": b64(small), "signature": signature["signature"]},
    )
    if verified.get("valid") is not True:
        raise BenchError("set-up: the ECDSA signature kms made does not verify")
    healthz = encode_request("GET", "/healthz")
    return [
        Scenario(BASELINE, [healthz]),
        Scenario("encrypt_256", [post("/encrypt", {"key_id": HOT_AES, "plaintext": b64(small)})]),
        Scenario(
            "decrypt_256",
            [post("/decrypt", {"key_id": HOT_AES, "ciphertext": ciphertext["ciphertext"]})],
        ),
        Scenario(
            "encrypt_64k",
            [post("/encrypt", {"key_id": HOT_AES, "plaintext": b64(os.urandom(64 * 1024))})],
        ),
        Scenario("sign_ecdsa_p256", [post("/sign", {"key_id": HOT_P256, "message": b64(small)})]),
        Scenario("sign_ed25519", [post("/sign", {"key_id": HOT_ED25519, "message": b64(small)})]),
        Scenario(
            "verify_ecdsa_p256",
            [
                post(
                    "/verify",
                    {
                        "key_id": HOT_P256,
                        "message": b64(small),
                        "signature": signature["signature"],
                    },
                )
            ],
            expect=b'"valid":true',
        ),
        Scenario("datakey", [post("/datakey", {"key_id": HOT_AES})]),
        Scenario(
            "batch_encrypt_100x256",
            [
                post(
                    "/encrypt",
                    {"key_id": HOT_AES, "batch": [{"plaintext": b64(small)} for _ in range(100)]},
                )
            ],
            items=100,
        ),
        Scenario(
            "new_connections_cached_context",
            [encode_request("GET", "/healthz", keep_alive=False)],
            keep_alive=False,
        ),
    ]


def cold_requests(keys: int, cold_keys: int, rng: random.Random) -> list[bytes]:
    """Encrypts spread over ``cold_keys`` of the ``keys`` seeded ones, in random order."""
    plaintext = b64(os.urandom(256))
    chosen = rng.sample(range(keys), cold_keys)
    return [post("/encrypt", {"key_id": cold_key_id(i), "plaintext": plaintext}) for i in chosen]
