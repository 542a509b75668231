"""What the Vault routes take and answer (docs/vault-transit.md), through the app's test client:
the envelope, the options a Vault client may send as null or as text, the fields a request
cannot do without, batches with a bad item, listing, key types and tagged values, and the
operation the policy judges for a MAC check. The same over real gunicorn is
tests/http/test_vault_transit.py; these are the fast checks of each rule."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from kms.api.context import SERVICE
from kms.app import create_app
from kms.service.keyring import RootKeyring
from kms.settings import Settings
from tests.helpers.tls import client_as


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def post(client: FlaskClient, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post(f"/v1/transit/{path}", json=body)
    return response.status_code, response.get_json()


def create(client: FlaskClient, key_id: str, **options: Any) -> None:
    status, created = post(client, f"keys/{key_id}", options)
    assert status == 200, created


def test_every_answer_is_in_vault_s_envelope(client: FlaskClient) -> None:
    """hvac reads Vault's envelope: no lease, not renewable, no wrapping, no auth."""
    create(client, "k")
    response = client.post("/v1/transit/encrypt/k", json={"plaintext": b64(b"x")})
    assert response.status_code == 200
    document = response.get_json()
    assert uuid.UUID(document["request_id"]).hex == response.headers["X-Request-Id"]
    assert {key: value for key, value in document.items() if key not in ("request_id", "data")} == {
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "wrap_info": None,
        "warnings": None,
        "auth": None,
        "mount_type": "transit",
    }


def operations_done(operation: str, algorithm: str) -> float:
    labels = {"operation": operation, "algorithm": algorithm}
    return REGISTRY.get_sample_value("kms_crypto_operations_total", labels) or 0.0


def test_a_vault_encryption_is_counted_under_its_key_s_algorithm(client: FlaskClient) -> None:
    """docs/operations.md: kms_crypto_operations_total{operation, algorithm}, the algorithm
    the key used, whichever API the request came through."""
    create(client, "chacha", type="chacha20-poly1305")
    before = operations_done("encrypt", "ChaCha20-Poly1305")
    status, _ = post(client, "encrypt/chacha", {"plaintext": b64(b"x")})
    assert status == 200
    assert operations_done("encrypt", "ChaCha20-Poly1305") - before == 1


def test_an_option_sent_as_null_is_an_option_left_out(client: FlaskClient) -> None:
    """Vault clients send null for what they leave at its default."""
    status, created = post(
        client, "keys/k", {"key_size": None, "type": "aes256-gcm96", "auto_rotate_period": None}
    )
    assert status == 200, created
    status, configured = post(
        client, "keys/k/config", {"deletion_allowed": None, "auto_rotate_period": None}
    )
    assert status == 200, configured
    assert configured["data"]["deletion_allowed"] is False
    status, encrypted = post(client, "encrypt/k", {"plaintext": b64(b"x"), "context": None})
    assert status == 200, encrypted
    ciphertext = encrypted["data"]["ciphertext"]
    status, decrypted = post(client, "decrypt/k", {"ciphertext": ciphertext, "context": None})
    assert (status, decrypted["data"]["plaintext"]) == (200, b64(b"x"))


def test_a_number_may_come_as_text_as_vault_takes_it(client: FlaskClient) -> None:
    """`/random/<bytes>` takes its count from the path, and a body may say `"bits": "128"`,
    `"key_size": "64"` or `"min_available_version": "1"`."""
    status, drawn = post(client, "random/8", {"format": "hex"})
    assert status == 200, drawn
    assert len(bytes.fromhex(drawn["data"]["random_bytes"])) == 8
    create(client, "k")
    status, made = post(client, "datakey/plaintext/k", {"bits": "128"})
    assert status == 200, made
    assert len(base64.b64decode(made["data"]["plaintext"])) == 16
    status, trimmed = post(client, "keys/k/trim", {"min_available_version": "1"})
    assert status == 200, trimmed
    create(client, "m", type="hmac", key_size="64")
    status, made = post(client, "hmac/m/sha2-512", {"input": b64(b"message")})
    assert status == 200, made
    assert len(base64.b64decode(made["data"]["hmac"].split(":")[2])) == 64


def test_a_request_without_what_it_needs_is_a_400_that_says_so(client: FlaskClient) -> None:
    """Not a 500: a trim without min_available_version, an encryption without plaintext or
    batch_input (a message for the whole request stands alone, as Vault's do)."""
    create(client, "k")
    status, refused = post(client, "keys/k/trim", {})
    assert status == 400, refused
    assert refused == {"errors": ["min_available_version: Missing data for required field."]}
    status, refused = post(client, "encrypt/k", {})
    assert (status, refused) == (400, {"errors": ["missing plaintext to encrypt"]})
    status, refused = post(client, "decrypt/k", {})
    assert (status, refused) == (400, {"errors": ["missing ciphertext to decrypt"]})
    status, refused = post(client, "rewrap/k", {})
    assert (status, refused) == (400, {"errors": ["missing ciphertext to rewrap"]})
    status, refused = post(client, "decrypt/k", {"ciphertext": 5})
    assert (status, refused) == (400, {"errors": ["ciphertext: must be a string"]})


def test_a_batch_item_without_its_input_fails_alone(client: FlaskClient) -> None:
    """Vault's batch: every item answered in its place, 400 when one failed; a batch needs no
    top-level plaintext or ciphertext."""
    create(client, "k")
    status, encrypted = post(
        client,
        "encrypt/k",
        {"batch_input": [{"plaintext": b64(b"one"), "reference": "a"}, {"reference": "b"}]},
    )
    assert status == 400, encrypted
    first, second = encrypted["data"]["batch_results"]
    assert first["reference"] == "a" and first["ciphertext"].startswith("vault:v1:")
    assert second == {"error": "plaintext: Missing data for required field.", "reference": "b"}

    status, encrypted = post(client, "encrypt/k", {"batch_input": [{"plaintext": b64(b"one")}]})
    assert status == 200, encrypted
    [item] = encrypted["data"]["batch_results"]
    status, decrypted = post(
        client,
        "decrypt/k",
        {"batch_input": [{"ciphertext": item["ciphertext"]}, {"reference": "b"}]},
    )
    assert status == 400, decrypted
    assert decrypted["data"]["batch_results"] == [
        {"plaintext": b64(b"one"), "reference": ""},
        {"error": "ciphertext: Missing data for required field.", "reference": "b"},
    ]


def test_list_names_each_key_once(client: FlaskClient) -> None:
    for key_id in ("a", "b", "c"):
        create(client, key_id)
    response = client.open("/v1/transit/keys", method="LIST")
    assert response.status_code == 200
    document = response.get_json()
    assert document["data"] == {"keys": ["a", "b", "c"]}
    assert document["warnings"] is None


def test_a_vault_key_type_kms_does_not_offer_is_named_as_such(client: FlaskClient) -> None:
    """docs/vault-transit.md: a type Vault has and kms does not is "not supported by kms"; a
    name Vault does not have either is unknown."""
    status, refused = post(client, "keys/k", {"type": "ecdsa-p521"})
    assert (status, refused) == (400, {"errors": ["key type ecdsa-p521 is not supported by kms"]})
    status, refused = post(client, "keys/k", {"type": "rot13"})
    assert (status, refused) == (400, {"errors": ["unknown key type rot13"]})


def test_an_hmac_or_signature_that_is_not_strict_base64_is_refused(client: FlaskClient) -> None:
    """A tagged value whose body is not base64 is a malformed request (400), not a MAC or
    signature that merely fails to verify: base64 is not decoded leniently."""
    create(client, "m", type="hmac", key_size=32)
    create(client, "s", type="ed25519")
    data = b64(b"message")
    status, refused = post(client, "verify/m", {"input": data, "hmac": "vault:v1:!!!!"})
    assert (status, refused) == (400, {"errors": ["invalid base64 HMAC value"]})
    status, refused = post(client, "verify/s", {"input": data, "signature": "vault:v1:!!!!"})
    assert (status, refused) == (400, {"errors": ["invalid base64 signature value"]})


POLICY = """\
clients:
  macs-only:
    - operations: ["keys:create", "mac", "mac:verify"]
      keys: ["*"]
  signatures-only:
    - operations: ["verify"]
      keys: ["*"]
"""


def test_verifying_an_hmac_is_the_mac_verify_operation(
    initialised: Settings, keyring: RootKeyring, tmp_path: Path
) -> None:
    """docs/vault-transit.md: `verify` with `hmac` is `mac:verify` in the policy, so a caller
    allowed to check signatures cannot check MACs, and one allowed MACs can."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    app = create_app(initialised.with_overrides(policy_file=policy), keyring=keyring)
    macs, signatures = client_as(app, "macs-only"), client_as(app, "signatures-only")
    create(macs, "m", type="hmac", key_size=32)
    data = b64(b"message")
    status, made = post(macs, "hmac/m", {"input": data})
    assert status == 200, made
    body = {"input": data, "hmac": made["data"]["hmac"]}
    status, checked = post(macs, "verify/m", body)
    assert (status, checked["data"]) == (200, {"valid": True})
    status, refused = post(signatures, "verify/m", body)
    assert (status, refused) == (403, {"errors": ["permission denied"]})


def test_a_key_reads_as_vault_describes_one_kms_keeps(client: FlaskClient) -> None:
    """kms keys are never derived nor imported (kms takes no key material in)."""
    create(client, "k")
    response = client.get("/v1/transit/keys/k")
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert (data["supports_derivation"], data["imported_key"], data["derived"]) == (
        False,
        False,
        False,
    )


def test_vault_refuses_what_kms_cannot_do_with_its_reason(client: FlaskClient) -> None:
    """An HMAC key of another size, a negative rotation period, and a verify whose body names
    another key than its URL."""
    status, refused = post(client, "keys/m", {"type": "hmac", "key_size": 48})
    assert (status, refused) == (
        400,
        {"errors": ["key_size: kms makes hmac keys of 32 or 64 bytes"]},
    )
    status, refused = post(client, "keys/k", {"auto_rotate_period": -1})
    assert (status, refused) == (400, {"errors": ["auto_rotate_period must not be negative"]})
    assert client.get("/v1/transit/keys/k").status_code == 404
    create(client, "s", type="ed25519")
    data = b64(b"message")
    status, signed = post(client, "sign/s", {"input": data})
    assert status == 200, signed
    body = {"input": data, "signature": signed["data"]["signature"], "name": "other"}
    status, refused = post(client, "verify/s", body)
    assert (status, refused) == (
        400,
        {"errors": ["name: the key's name in the body differs from the one in the URL"]},
    )


def test_an_rsa_key_signs_with_the_scheme_and_hash_vault_asks_for(client: FlaskClient) -> None:
    """docs/vault-transit.md: `signature_algorithm` and `hash_algorithm` apply to RSA keys:
    PKCS#1 v1.5 signatures are deterministic (the same twice) and verify only as PKCS#1 v1.5
    with their hash, not as the default PSS."""
    create(client, "r", type="rsa-2048")
    data = b64(b"message")
    options = {"signature_algorithm": "pkcs1v15", "hash_algorithm": "sha2-512"}
    first = post(client, "sign/r", {"input": data, **options})
    second = post(client, "sign/r", {"input": data, **options})
    assert first[0] == second[0] == 200, first
    signature = first[1]["data"]["signature"]
    assert second[1]["data"]["signature"] == signature
    status, checked = post(client, "verify/r", {"input": data, "signature": signature, **options})
    assert (status, checked["data"]) == (200, {"valid": True})
    status, checked = post(client, "verify/r", {"input": data, "signature": signature})
    assert (status, checked["data"]) == (200, {"valid": False})


def test_list_goes_on_past_its_first_page_of_keys(app: Flask, client: FlaskClient) -> None:
    """kms reads the keys 1,000 at a time; LIST names them all (up to 10,000), with no
    warning, however many pages that takes."""
    service = app.extensions[SERVICE]
    key_ids = [f"k{number:04d}" for number in range(1001)]
    for key_id in key_ids:
        service.create_key(key_id)
    response = client.open("/v1/transit/keys", method="LIST")
    assert response.status_code == 200
    document = response.get_json()
    assert document["data"]["keys"] == key_ids
    assert document["warnings"] is None


def test_sign_takes_input_or_batch_input_and_refuses_neither(client: FlaskClient) -> None:
    """docs/vault-transit.md: a sign request carries `input` or `batch_input`; with neither it
    is a 400 that says so, and a batch alone (no `input`) is signed item by item."""
    create(client, "s", type="ecdsa-p256")
    status, refused = post(client, "sign/s", {})
    assert (status, refused) == (400, {"errors": ["missing input"]})
    status, signed = post(client, "sign/s", {"batch_input": [{"input": b64(b"one")}]})
    assert status == 200, signed
    results = signed["data"]["batch_results"]
    assert len(results) == 1 and results[0]["signature"].startswith("vault:v1:"), results


def test_decrypting_under_a_key_that_does_not_exist_is_vault_s_400(client: FlaskClient) -> None:
    """docs/vault-transit.md: an operation on a missing key is Vault's 400 "encryption key not
    found" (only reads, lists, exports and backups of a key answer 404)."""
    status, refused = post(client, "decrypt/missing", {"ciphertext": "vault:v1:AAAA"})
    assert (status, refused) == (400, {"errors": ["encryption key not found"]})
