"""The Vault Transit routes, spoken to by hvac (a Vault client no one here wrote) over real
gunicorn and mutual TLS: every supported call round-trips, errors come back as the hvac
exceptions a Vault user catches, and one key serves both APIs (docs/vault-transit.md)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
from hvac import exceptions

from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    create_key,
    expect_json,
    new_session,
    prepare_deployment,
    unb64,
    unique_key_id,
    wait_until,
)
from tests.helpers.identities import (
    audit_records,
    issue_client_certificate,
    running_server,
)

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parents[2] / "docs" / "vault-transit.md"

ENVELOPE_FIELDS = [
    "request_id",
    "lease_id",
    "renewable",
    "lease_duration",
    "data",
    "wrap_info",
    "warnings",
    "auth",
    "mount_type",
]
ENCRYPTION_TYPES = ["aes256-gcm96", "chacha20-poly1305"]
SIGNING_TYPES = ["ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]


def vault_client(deployment: Deployment, cert: Path, key: Path) -> hvac.Client:
    """hvac as a Vault user sets it up for mutual TLS; the session reads nothing from the
    environment (no proxy, no CA bundle)."""
    return hvac.Client(
        url=deployment.base_url,
        cert=(str(cert), str(key)),
        verify=str(deployment.ca_cert),
        session=new_session(cert, key, deployment.ca_cert),
    )


@pytest.fixture(scope="module")
def vault(server: ServerProcess) -> Iterator[hvac.Client]:
    deployment = server.deployment
    client = vault_client(deployment, deployment.client_cert, deployment.client_key)
    yield client
    client.adapter.close()


def transit(vault: hvac.Client) -> Any:
    return vault.secrets.transit


def text(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def new_key(vault: hvac.Client, key_type: str, prefix: str = "vault") -> str:
    name = unique_key_id(prefix)
    if key_type == "hmac":
        # hvac's create_key checks the type against its own list, which lacks Vault's "hmac":
        # the request goes through hvac's adapter as a Vault user would send it.
        vault.adapter.post(f"/v1/transit/keys/{name}", json={"type": "hmac"})
    else:
        transit(vault).create_key(name, key_type=key_type)
    return name


# -- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", [*ENCRYPTION_TYPES, *SIGNING_TYPES, "hmac"])
def test_each_key_type_is_created_read_and_listed(vault: hvac.Client, key_type: str) -> None:
    name = new_key(vault, key_type)
    data = transit(vault).read_key(name)["data"]
    # Creating answers the key as reading it does.
    assert vault.adapter.post(f"/v1/transit/keys/{name}", json={})["data"] == data
    assert data["name"] == name
    assert data["type"] == key_type
    assert data["latest_version"] == 1
    assert data["min_decryption_version"] == 1
    assert data["min_encryption_version"] == 0
    assert data["min_available_version"] == 1
    assert data["deletion_allowed"] is False  # Vault's default
    assert data["exportable"] is False
    assert data["derived"] is False
    assert data["supports_encryption"] is (key_type in ENCRYPTION_TYPES)
    assert data["supports_decryption"] is (key_type in ENCRYPTION_TYPES)
    assert data["supports_signing"] is (key_type in SIGNING_TYPES)
    version = data["keys"]["1"]
    if key_type in SIGNING_TYPES:
        assert version["name"] in {"ed25519", "P-256", "P-384", key_type}
        assert version["public_key"]
        assert version["creation_time"].endswith("Z")
        signed = transit(vault).sign_data(name, hash_input=text(b"m"))["data"]["signature"]
        checked = transit(vault).verify_signed_data(name, text(b"m"), signature=signed)
        assert checked["data"]["valid"] is True
    else:
        assert isinstance(version, int) and version > 1_700_000_000
    assert name in transit(vault).list_keys()["data"]["keys"]


def test_create_read_config_rotate_trim_delete(vault: hvac.Client) -> None:
    name = new_key(vault, "aes256-gcm96", "life")
    # Creating a key that exists changes nothing (Vault's answer, not the native API's 409).
    again = transit(vault).create_key(name, key_type="chacha20-poly1305")
    assert again["data"]["type"] == "aes256-gcm96"
    assert again["warnings"] == [f"key {name} already existed"]
    for _ in range(3):
        transit(vault).rotate_key(name)  # no body, no Content-Type
    assert transit(vault).read_key(name)["data"]["latest_version"] == 4
    first = transit(vault).encrypt_data(name, plaintext=text(b"old"))["data"]
    assert first["key_version"] == 4
    configured = transit(vault).update_key_configuration(
        name, min_decryption_version=3, deletion_allowed=True, auto_rotate_period="24h"
    )["data"]
    assert configured["min_decryption_version"] == 3
    assert configured["deletion_allowed"] is True
    assert configured["auto_rotate_period"] == 86400
    trimmed = transit(vault).trim_key(name, min_version=2)["data"]
    assert trimmed["min_available_version"] == 2
    assert sorted(trimmed["keys"]) == ["2", "3", "4"]
    assert transit(vault).delete_key(name).status_code == 204
    with pytest.raises(exceptions.InvalidPath):
        transit(vault).read_key(name)


def test_a_key_is_deleted_only_once_deletion_is_allowed(vault: hvac.Client) -> None:
    name = new_key(vault, "aes256-gcm96", "undeletable")
    with pytest.raises(exceptions.InvalidRequest) as refused:
        transit(vault).delete_key(name)
    assert refused.value.errors == [
        f"error deleting policy {name}: deletion is not allowed for this key"
    ]
    assert transit(vault).read_key(name)["data"]["name"] == name


def test_list_takes_the_list_method_and_get_with_list_true(
    vault: hvac.Client, client: KMSClient
) -> None:
    name = new_key(vault, "aes256-gcm96", "listed")
    assert name in expect_json(client.get("/v1/transit/keys?list=true"), 200)["data"]["keys"]
    assert name in expect_json(client.request("LIST", "/v1/transit/keys"), 200)["data"]["keys"]
    refused = client.get("/v1/transit/keys")
    assert (refused.status_code, refused.json()) == (405, {"errors": ["unsupported operation"]})


# -- encryption ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ENCRYPTION_TYPES)
def test_encrypt_decrypt_rewrap_single_with_context(vault: hvac.Client, key_type: str) -> None:
    name = new_key(vault, key_type)
    context = text(b"tenant-7")
    encrypted = transit(vault).encrypt_data(name, plaintext=text(b"hello"), context=context)
    ciphertext = encrypted["data"]["ciphertext"]
    assert ciphertext.startswith("vault:v1:")
    assert list(encrypted) == ENVELOPE_FIELDS
    assert encrypted["mount_type"] == "transit" and encrypted["lease_id"] == ""
    decrypted = transit(vault).decrypt_data(name, ciphertext=ciphertext, context=context)
    assert unb64(decrypted["data"]["plaintext"]) == b"hello"
    # The context binds the ciphertext: another one, or none, does not open it.
    for other in (text(b"tenant-8"), None):
        with pytest.raises(exceptions.InvalidRequest) as refused:
            transit(vault).decrypt_data(name, ciphertext=ciphertext, context=other)
        assert refused.value.errors == ["cipher: message authentication failed"]
    transit(vault).rotate_key(name)
    rewrapped = transit(vault).rewrap_data(name, ciphertext=ciphertext, context=context)["data"]
    assert rewrapped["ciphertext"].startswith("vault:v2:") and rewrapped["key_version"] == 2
    again = transit(vault).decrypt_data(name, ciphertext=rewrapped["ciphertext"], context=context)
    assert unb64(again["data"]["plaintext"]) == b"hello"


def test_encrypt_decrypt_rewrap_batches(vault: hvac.Client) -> None:
    name = new_key(vault, "aes256-gcm96", "batch")
    items = [
        {"plaintext": text(b"one"), "context": text(b"a"), "reference": "r1"},
        {"plaintext": text(b"two"), "context": text(b"b"), "reference": "r2"},
    ]
    encrypted = transit(vault).encrypt_data(name, batch_input=items)["data"]["batch_results"]
    assert [item["reference"] for item in encrypted] == ["r1", "r2"]
    assert all(item["key_version"] == 1 for item in encrypted)
    to_decrypt = [
        {"ciphertext": result["ciphertext"], "context": item["context"]}
        for result, item in zip(encrypted, items, strict=True)
    ]
    decrypted = transit(vault).decrypt_data(name, batch_input=to_decrypt)["data"]
    assert [unb64(item["plaintext"]) for item in decrypted["batch_results"]] == [b"one", b"two"]
    transit(vault).rotate_key(name)
    rewrapped = transit(vault).rewrap_data(name, ciphertext=None, batch_input=to_decrypt)["data"]
    assert all(item["ciphertext"].startswith("vault:v2:") for item in rewrapped["batch_results"])
    # One bad item: 400, the good item still answered, the bad one with its error.
    mixed = [to_decrypt[0], {"ciphertext": "no-prefix", "context": text(b"a")}]
    with pytest.raises(exceptions.InvalidRequest) as failed:
        transit(vault).decrypt_data(name, batch_input=mixed)
    results = failed.value.json["data"]["batch_results"]
    assert unb64(results[0]["plaintext"]) == b"one"
    assert results[1]["error"] == "invalid ciphertext: no prefix"


@pytest.mark.parametrize(("kind", "bits"), [("plaintext", 256), ("wrapped", 128)])
def test_datakey(vault: hvac.Client, kind: str, bits: int) -> None:
    name = new_key(vault, "aes256-gcm96", "datakey")
    data = transit(vault).generate_data_key(name, key_type=kind, bits=bits)["data"]
    plaintext = transit(vault).decrypt_data(name, ciphertext=data["ciphertext"])["data"]
    assert len(unb64(plaintext["plaintext"])) == bits // 8
    if kind == "plaintext":
        assert data["plaintext"] == plaintext["plaintext"]
    else:
        assert "plaintext" not in data
    with pytest.raises(exceptions.InvalidRequest) as refused:
        transit(vault).generate_data_key(name, key_type=kind, bits=512)
    assert refused.value.errors == ["bits: kms makes data keys of 128 or 256 bits"]


# -- HMAC and signatures -------------------------------------------------------------------------


def test_hmac_and_verify(vault: hvac.Client) -> None:
    name = new_key(vault, "hmac", "hmac")
    made = transit(vault).generate_hmac(name, hash_input=text(b"data"))["data"]["hmac"]
    assert made.startswith("vault:v1:")
    assert transit(vault).verify_signed_data(name, text(b"data"), hmac=made)["data"]["valid"]
    wrong = transit(vault).verify_signed_data(name, text(b"other"), hmac=made)["data"]
    assert wrong["valid"] is False
    with pytest.raises(exceptions.InvalidRequest):
        transit(vault).generate_hmac(name, hash_input=text(b"data"), algorithm="sha2-512")


SIGNING_CASES = [
    ("ed25519", {}),
    ("ecdsa-p256", {}),
    ("ecdsa-p256", {"hash_algorithm": "sha2-256", "marshaling_algorithm": "asn1"}),
    ("ecdsa-p384", {"hash_algorithm": "sha2-384"}),
    ("rsa-2048", {}),
    ("rsa-2048", {"signature_algorithm": "pkcs1v15", "hash_algorithm": "sha2-512"}),
    ("rsa-2048", {"signature_algorithm": "pss", "hash_algorithm": "sha2-384"}),
    ("rsa-2048", {"signature_algorithm": "pss", "salt_length": "hash"}),
]


@pytest.mark.parametrize(("key_type", "options"), SIGNING_CASES)
def test_sign_and_verify(vault: hvac.Client, key_type: str, options: dict[str, str]) -> None:
    name = new_key(vault, key_type, "signer")
    signed = transit(vault).sign_data(name, hash_input=text(b"message"), **options)["data"]
    assert signed["signature"].startswith("vault:v1:") and signed["key_version"] == 1
    verify = transit(vault).verify_signed_data
    assert verify(name, text(b"message"), signature=signed["signature"], **options)["data"]["valid"]
    assert not verify(name, text(b"forged"), signature=signed["signature"], **options)["data"][
        "valid"
    ]


@pytest.mark.parametrize(
    ("key_type", "algorithm", "digest"),
    [("ecdsa-p256", "sha2-256", "sha256"), ("rsa-2048", "sha2-512", "sha512")],
)
def test_sign_prehashed(vault: hvac.Client, key_type: str, algorithm: str, digest: str) -> None:
    name = new_key(vault, key_type, "prehashed")
    prehashed = text(hashlib.new(digest, b"message").digest())
    signed = transit(vault).sign_data(
        name, hash_input=prehashed, hash_algorithm=algorithm, prehashed=True
    )["data"]["signature"]
    # A signature over the digest is the signature over the message.
    checked = transit(vault).verify_signed_data(
        name, text(b"message"), signature=signed, hash_algorithm=algorithm
    )
    assert checked["data"]["valid"] is True


def test_sign_batch(vault: hvac.Client) -> None:
    name = new_key(vault, "ecdsa-p256", "sign-batch")
    items = [{"input": text(b"a"), "reference": "x"}, {"input": text(b"b"), "reference": "y"}]
    results = transit(vault).sign_data(name, batch_input=items)["data"]["batch_results"]
    assert [item["reference"] for item in results] == ["x", "y"]
    for item, result in zip(items, results, strict=True):
        checked = transit(vault).verify_signed_data(
            name, item["input"], signature=result["signature"]
        )
        assert checked["data"]["valid"] is True


def test_options_kms_does_not_offer_are_refused_not_ignored(vault: hvac.Client) -> None:
    name = new_key(vault, "ecdsa-p256", "options")
    refusals = [
        lambda: transit(vault).create_key(unique_key_id("x"), exportable=True),
        lambda: transit(vault).create_key(unique_key_id("x"), derived=True),
        lambda: transit(vault).create_key(unique_key_id("x"), key_type="ecdsa-p521"),
        lambda: transit(vault).create_key(unique_key_id("x"), allow_plaintext_backup=True),
        lambda: transit(vault).sign_data(name, text(b"m"), marshaling_algorithm="jws"),
        lambda: transit(vault).sign_data(name, text(b"m"), salt_length="auto"),
        lambda: transit(vault).sign_data(name, text(b"m"), hash_algorithm="sha2-224"),
        lambda: transit(vault).update_key_configuration(name, exportable=True),
        lambda: transit(vault).update_key_configuration(name, min_encryption_version=1),
        lambda: transit(vault).export_key(name, key_type="signing-key"),
        lambda: transit(vault).backup_key(name),
    ]
    for refuse in refusals:
        with pytest.raises(exceptions.InvalidRequest):
            refuse()
    with pytest.raises(exceptions.InvalidRequest) as export:
        transit(vault).export_key(name, key_type="signing-key")
    assert export.value.errors == ["key is not exportable"]


@pytest.mark.needs("openssl")
def test_a_vault_signature_verifies_with_openssl(vault: hvac.Client, tmp_path: Path) -> None:
    for key_type in ("ecdsa-p256", "ed25519", "rsa-2048"):
        name = new_key(vault, key_type, "openssl")
        message = tmp_path / "message"
        message.write_bytes(b"verify me")
        signed = transit(vault).sign_data(name, hash_input=text(b"verify me"))["data"]
        signature = tmp_path / "signature"
        signature.write_bytes(unb64(signed["signature"].split(":", 2)[2]))
        public = transit(vault).read_key(name)["data"]["keys"]["1"]["public_key"]
        pem = tmp_path / "public.pem"
        if key_type == "ed25519":
            # Vault shows an Ed25519 public key as its 32 raw bytes: wrap them in SPKI DER.
            der = bytes.fromhex("302a300506032b6570032100") + unb64(public)
            (tmp_path / "public.der").write_bytes(der)
            pem = tmp_path / "public.der"
            command = ["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER"]
            command += ["-inkey", str(pem), "-rawin", "-in", str(message)]
            command += ["-sigfile", str(signature)]
        else:
            pem.write_text(public, encoding="ascii")
            padding = ["-sigopt", "rsa_padding_mode:pss"] if key_type.startswith("rsa") else []
            command = ["openssl", "dgst", "-sha256", *padding, "-verify", str(pem)]
            command += ["-signature", str(signature), str(message)]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_SECONDS, check=False
        )
        assert result.returncode == 0, (key_type, result)


# -- no key --------------------------------------------------------------------------------------


def test_random_and_hash(vault: hvac.Client) -> None:
    drawn = transit(vault).generate_random_bytes(n_bytes=16)["data"]["random_bytes"]
    assert len(unb64(drawn)) == 16
    hexed = transit(vault).generate_random_bytes(n_bytes=8, output_format="hex")["data"]
    assert len(bytes.fromhex(hexed["random_bytes"])) == 8
    summed = transit(vault).hash_data(text(b"abc"), algorithm="sha2-512")["data"]["sum"]
    assert summed == hashlib.sha512(b"abc").hexdigest()
    based = transit(vault).hash_data(text(b"abc"), output_format="base64")["data"]["sum"]
    assert unb64(based) == hashlib.sha256(b"abc").digest()


# -- one key, both APIs --------------------------------------------------------------------------


def test_one_key_serves_the_native_api_and_the_vault_routes(
    vault: hvac.Client, client: KMSClient
) -> None:
    name = unique_key_id("both")
    create_key(client, key_id=name)
    vault_context = text(b"order-42")
    native_context = {"vault_context": vault_context}
    native = expect_json(
        client.post(
            "/v1/kms/encrypt",
            json={"key_id": name, "plaintext": b64(b"native"), "context": native_context},
        ),
        200,
    )
    raw = unb64(native["ciphertext"])  # b"v1:" || nonce || ciphertext || tag
    version, _, body = raw.partition(b":")
    as_vault = f"vault:{version.decode()}:{text(body)}"
    opened = transit(vault).decrypt_data(name, ciphertext=as_vault, context=vault_context)
    assert unb64(opened["data"]["plaintext"]) == b"native"
    made = transit(vault).encrypt_data(name, plaintext=text(b"vault"), context=vault_context)
    _, vault_version, vault_body = made["data"]["ciphertext"].split(":", 2)
    as_native = text(vault_version.encode() + b":" + unb64(vault_body))
    decrypted = expect_json(
        client.post(
            "/v1/kms/decrypt",
            json={"key_id": name, "ciphertext": as_native, "context": native_context},
        ),
        200,
    )
    assert unb64(decrypted["plaintext"]) == b"vault"


# -- errors --------------------------------------------------------------------------------------


def test_errors_have_vaults_shape_status_and_words(
    vault: hvac.Client, client: KMSClient, server: ServerProcess
) -> None:
    missing = unique_key_id("missing")
    with pytest.raises(exceptions.InvalidRequest) as encrypt:
        transit(vault).encrypt_data(missing, plaintext=text(b"x"))
    assert encrypt.value.errors == ["encryption key not found"]
    with pytest.raises(exceptions.InvalidPath) as read:
        transit(vault).read_key(missing)
    assert read.value.errors == []
    name = new_key(vault, "aes256-gcm96", "errors")
    for ciphertext, message in [
        ("djE6AAAA", "invalid ciphertext: no prefix"),
        ("vault:v1", "invalid ciphertext: wrong number of fields"),
        ("vault:vx:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v1:!!", "invalid ciphertext: could not decode base64"),
        ("vault:v1:" + text(b"\0" * 40), "cipher: message authentication failed"),
    ]:
        with pytest.raises(exceptions.InvalidRequest) as bad:
            transit(vault).decrypt_data(name, ciphertext=ciphertext)
        assert bad.value.errors == [message]
    response = client.post(f"/v1/transit/decrypt/{name}", json={"ciphertext": "x"})
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"errors": ["invalid ciphertext: no prefix"]}
    unknown = client.post("/v1/transit/no-such-route", json={})
    assert (unknown.status_code, unknown.json()) == (404, {"errors": ["unsupported path"]})
    # The token header is accepted and ignored: the certificate is the caller.
    with_token = client.post(
        f"/v1/transit/encrypt/{name}",
        json={"plaintext": text(b"x")},
        headers={"X-Vault-Token": "s.not-a-token"},
    )
    assert with_token.status_code == 200
    request_id = with_token.headers["X-Request-Id"]
    wait_until(
        lambda: request_id in server.deployment.audit_log.read_text(encoding="utf-8"),
        "the audit line of the request with a token",
    )
    assert "s.not-a-token" not in server.deployment.audit_log.read_text(encoding="utf-8")
    assert "s.not-a-token" not in server.output()


# -- policy, audit, rate limits ------------------------------------------------------------------

POLICY = """\
clients:
  "cn:orchestrator":
    - operations: ["*"]
      keys: ["*"]
  "cn:orders-writer":
    - operations: ["encrypt"]
      keys: ["orders-*"]
  "cn:checker":
    - operations: ["verify"]
      keys: ["*"]
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("kms-vault-policy")
    (directory / "policy.yaml").write_text(POLICY, encoding="utf-8")
    deployment = prepare_deployment(
        directory,
        authorization={"policy_file": str(directory / "policy.yaml")},
        audit={"summary_seconds": 1},
    )
    with running_server(deployment) as server:
        yield server


def identity(deployment: Deployment, name: str) -> hvac.Client:
    cert, key = issue_client_certificate(deployment, name, name)
    return vault_client(deployment, cert, key)


def test_the_policy_covers_the_vault_routes_by_operation(guarded: ServerProcess) -> None:
    deployment = guarded.deployment
    admin = vault_client(deployment, deployment.client_cert, deployment.client_key)
    transit(admin).create_key("orders-1")
    writer = identity(deployment, "orders-writer")
    encrypted = transit(writer).encrypt_data("orders-1", plaintext=text(b"x"))["data"]
    with pytest.raises(exceptions.Forbidden) as denied:
        transit(writer).decrypt_data("orders-1", ciphertext=encrypted["ciphertext"])
    assert denied.value.errors == ["permission denied"]
    with pytest.raises(exceptions.Forbidden):
        transit(writer).encrypt_data("payroll-1", plaintext=text(b"x"))
    # The audit trail names the Vault route and the operation the policy knows.
    answered = [
        record
        for record in audit_records(deployment)
        if record["type"] == "response" and record.get("identity") == "cn:orders-writer"
    ]
    assert [(r["path"], r["operation"], r["status"]) for r in answered] == [
        ("/v1/transit/encrypt/orders-1", "encrypt", 200)
    ]
    assert answered[0]["key_id"] == "orders-1" and answered[0]["key_version"] == 1

    def denied_decrypt_summarised() -> bool:
        return any(
            record["type"] == "summary"
            and record["identity"] == "cn:orders-writer"
            and record["operations"].get("decrypt") == 1
            for record in audit_records(deployment)
        )

    wait_until(denied_decrypt_summarised, "the summary line of the refused decrypt")
    admin.adapter.close()
    writer.adapter.close()


def test_verify_with_an_hmac_is_the_mac_verify_operation(guarded: ServerProcess) -> None:
    deployment = guarded.deployment
    admin = vault_client(deployment, deployment.client_cert, deployment.client_key)
    transit(admin).create_key("signer-1", key_type="ecdsa-p256")
    admin.adapter.post("/v1/transit/keys/tokens-1", json={"type": "hmac"})
    signature = transit(admin).sign_data("signer-1", text(b"m"))["data"]["signature"]
    mac = transit(admin).generate_hmac("tokens-1", text(b"m"))["data"]["hmac"]
    checker = identity(deployment, "checker")
    verified = transit(checker).verify_signed_data("signer-1", text(b"m"), signature=signature)
    assert verified["data"]["valid"] is True
    # Only "verify" is granted: checking an HMAC needs "mac:verify".
    with pytest.raises(exceptions.Forbidden):
        transit(checker).verify_signed_data("tokens-1", text(b"m"), hmac=mac)
    admin.adapter.close()
    checker.adapter.close()


def test_over_the_rate_limit_hvac_raises_rate_limit_exceeded(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    deployment = prepare_deployment(
        tmp_path_factory.mktemp("kms-vault-rate"), rate_limit={"rate": 1, "burst": 3}
    )
    with running_server(deployment):
        client = vault_client(deployment, deployment.client_cert, deployment.client_key)
        with pytest.raises(exceptions.RateLimitExceeded) as limited:
            for _ in range(50):  # at most 3 + 1 a second get through
                transit(client).generate_random_bytes(n_bytes=4)
        assert limited.value.errors == ["rate limit quota exceeded"]
        client.adapter.close()
        raw = new_session(deployment.client_cert, deployment.client_key, deployment.ca_cert)
        for _ in range(50):
            answered = raw.post(f"{deployment.base_url}/v1/transit/random", json={})
            if answered.status_code == 429:
                break
        assert answered.status_code == 429
        assert int(answered.headers["Retry-After"]) >= 1
        assert answered.json() == {"errors": ["rate limit quota exceeded"]}
        raw.close()


def test_the_envelope_of_a_raw_answer(client: KMSClient) -> None:
    response = client.post("/v1/transit/random/8", json={"format": "hex"})
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert list(document) == ENVELOPE_FIELDS
    assert {key: document[key] for key in ENVELOPE_FIELDS if key not in ("request_id", "data")} == {
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "wrap_info": None,
        "warnings": None,
        "auth": None,
        "mount_type": "transit",
    }
    assert response.headers["X-Request-Id"] == document["request_id"].replace("-", "")
    assert len(bytes.fromhex(document["data"]["random_bytes"])) == 8
    assert json.loads(response.text) == document


def test_the_documented_hvac_example_runs(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/vault-transit.md's example, as written but for the server's address, files and a
    key name of its own."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "VAULT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    deployment = server.deployment
    found = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert found is not None
    example = (
        found.group(1)
        .replace("https://localhost:8080", deployment.base_url)
        .replace("./secrets/client.crt", str(deployment.client_cert))
        .replace("./secrets/client.key", str(deployment.client_key))
        .replace("./secrets/ca.pem", str(deployment.ca_cert))
        .replace('"orders"', repr(unique_key_id("doc-orders")))
    )
    assert example.count(deployment.base_url) == 1 and "./secrets" not in example
    exec(compile(example, str(DOC), "exec"), {})  # noqa: S102 - our own document's example


def test_native_state_conflicts_are_vaults_400(vault: hvac.Client, client: KMSClient) -> None:
    name = new_key(vault, "aes256-gcm96", "disabled")
    expect_json(client.post(f"/v1/kms/keys/{name}/disable"), 200)
    with pytest.raises(exceptions.InvalidRequest) as refused:
        transit(vault).encrypt_data(name, plaintext=text(b"x"))
    assert refused.value.errors == ["key is disabled"]
    data = transit(vault).read_key(name)["data"]
    assert data["name"] == name


def test_hmac_keys_of_64_bytes_compute_sha2_512(vault: hvac.Client) -> None:
    name = unique_key_id("hmac512")
    vault.adapter.post(f"/v1/transit/keys/{name}", json={"type": "hmac", "key_size": 64})
    made = transit(vault).generate_hmac(name, text(b"m"), algorithm="sha2-512")["data"]["hmac"]
    assert len(unb64(made.split(":", 2)[2])) == 64
    with pytest.raises(exceptions.InvalidRequest):
        transit(vault).generate_hmac(name, text(b"m"))  # sha2-256 is Vault's default
