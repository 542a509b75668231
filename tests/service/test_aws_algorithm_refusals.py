"""An AWS request whose algorithm does not fit its key is refused before any work
(docs/aws-kms.md, InvalidKeyUsageException): no encryption counted against the version's limit,
no decryption made or counted, no key material unwrapped. Through the app's test client, with
the use a refused request would leave read from the service the app serves with.

The same refusals' AWS error codes are tests/service/test_vault_and_aws_error_answers.py."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from kms.api.context import SERVICE
from kms.service.keys import KMSService
from tests.helpers.aws_wire import aws

PLAINTEXT = base64.b64encode(b"record").decode("ascii")


def create(client: FlaskClient, key_id: str, **fields: object) -> None:
    created = client.post("/v1/kms/keys", json={"key_id": key_id, **fields})
    assert created.status_code == 201, created.get_json()


def use_of(app: Flask) -> dict[tuple[str, int], tuple[int, int]]:
    """(key_id, version) -> (encryptions made, decryptions), as the database has them."""
    service: KMSService = app.extensions[SERVICE]
    service.flush_use()
    return {
        (key_id, version): (encrypted, decrypted)
        for key_id, version, encrypted, decrypted, _reserved in service.use_totals()
    }


def decryptions(app: Flask, key_id: str) -> int:
    """An RSA-OAEP key reserves no encryptions: its versions are listed once decrypted."""
    return sum(decrypted for (key, _), (_, decrypted) in use_of(app).items() if key == key_id)


def refused_as_invalid_key_usage(status: int, answer: dict[str, Any]) -> None:
    assert (status, answer["__type"]) == (400, "InvalidKeyUsageException"), answer
    assert not {"CiphertextBlob", "Plaintext", "Mac"} & answer.keys()


def test_a_refused_encrypt_uses_none_of_the_version_s_encryptions(
    app: Flask, client: FlaskClient
) -> None:
    """A version that may make one encryption still makes it after an Encrypt under an
    algorithm that does not fit: the refusal neither counts one nor rotates the key."""
    create(client, "once", max_encryptions_per_version=1)
    refused_as_invalid_key_usage(
        *aws(
            client,
            "Encrypt",
            KeyId="once",
            Plaintext=PLAINTEXT,
            EncryptionAlgorithm="RSAES_OAEP_SHA_256",
        )
    )
    assert use_of(app) == {}
    status, encrypted = aws(client, "Encrypt", KeyId="once", Plaintext=PLAINTEXT)
    assert status == 200, encrypted
    assert app.extensions[SERVICE].get_key("once").version == 1
    assert use_of(app) == {("once", 1): (1, 0)}


def test_a_refused_decrypt_decrypts_nothing(app: Flask, client: FlaskClient) -> None:
    create(client, "aes")
    _, encrypted = aws(client, "Encrypt", KeyId="aes", Plaintext=PLAINTEXT)
    refused_as_invalid_key_usage(
        *aws(
            client,
            "Decrypt",
            CiphertextBlob=encrypted["CiphertextBlob"],
            EncryptionAlgorithm="RSAES_OAEP_SHA_256",
        )
    )
    assert use_of(app) == {("aes", 1): (1, 0)}


def test_a_refused_decrypt_of_an_rsa_blob_decrypts_nothing(app: Flask, client: FlaskClient) -> None:
    create(client, "oaep", purpose="encrypt", algorithm="RSA-OAEP-2048")
    status, encrypted = aws(
        client,
        "Encrypt",
        KeyId="oaep",
        Plaintext=PLAINTEXT,
        EncryptionAlgorithm="RSAES_OAEP_SHA_256",
    )
    assert status == 200, encrypted
    refused_as_invalid_key_usage(
        *aws(client, "Decrypt", CiphertextBlob=encrypted["CiphertextBlob"])
    )
    assert decryptions(app, "oaep") == 0


def test_a_re_encrypt_to_a_destination_that_does_not_fit_decrypts_nothing(
    app: Flask, client: FlaskClient
) -> None:
    """ReEncrypt is SYMMETRIC_DEFAULT on both sides: an RSA destination is refused before the
    source ciphertext is decrypted, and nothing is encrypted under it."""
    create(client, "source")
    create(client, "oaep", purpose="encrypt", algorithm="RSA-OAEP-2048")
    _, encrypted = aws(client, "Encrypt", KeyId="source", Plaintext=PLAINTEXT)
    refused_as_invalid_key_usage(
        *aws(
            client, "ReEncrypt", CiphertextBlob=encrypted["CiphertextBlob"], DestinationKeyId="oaep"
        )
    )
    assert use_of(app) == {("source", 1): (1, 0)}


def test_a_re_encrypt_of_an_rsa_blob_decrypts_nothing(app: Flask, client: FlaskClient) -> None:
    create(client, "oaep", purpose="encrypt", algorithm="RSA-OAEP-2048")
    create(client, "destination", max_encryptions_per_version=1)
    _, encrypted = aws(
        client,
        "Encrypt",
        KeyId="oaep",
        Plaintext=PLAINTEXT,
        EncryptionAlgorithm="RSAES_OAEP_SHA_256",
    )
    refused_as_invalid_key_usage(
        *aws(
            client,
            "ReEncrypt",
            CiphertextBlob=encrypted["CiphertextBlob"],
            DestinationKeyId="destination",
        )
    )
    assert decryptions(app, "oaep") == 0


@pytest.mark.parametrize("operation", ["GenerateDataKey", "GenerateDataKeyWithoutPlaintext"])
def test_a_data_key_under_an_rsa_key_is_refused_and_not_counted(
    app: Flask, client: FlaskClient, operation: str
) -> None:
    """AWS KMS makes data keys under symmetric keys only (InvalidKeyUsageException): the
    blob would otherwise claim an algorithm Decrypt refuses by default."""
    create(client, "oaep", purpose="encrypt", algorithm="RSA-OAEP-2048")
    refused_as_invalid_key_usage(*aws(client, operation, KeyId="oaep", KeySpec="AES_256"))
    assert use_of(app) == {}


def material_loads() -> float:
    return sum(
        REGISTRY.get_sample_value(name) or 0.0
        for name in ("kms_key_cache_hits_total", "kms_key_cache_misses_total")
    )


@pytest.mark.parametrize("operation", ["GenerateMac", "VerifyMac"])
def test_a_refused_mac_request_loads_no_key_material(client: FlaskClient, operation: str) -> None:
    """An HMAC_SHA_512 request to an HMAC_256 key is refused before its secret is looked up:
    the worker's key cache sees neither a hit nor a miss (/metrics publishes both)."""
    create(client, "mac", purpose="mac", algorithm="HMAC-SHA256")
    assert client.get("/metrics").status_code == 200
    before = material_loads()
    message = base64.b64encode(b"message").decode("ascii")
    extra = {"Mac": base64.b64encode(bytes(32)).decode("ascii")} if operation == "VerifyMac" else {}
    refused_as_invalid_key_usage(
        *aws(client, operation, KeyId="mac", Message=message, MacAlgorithm="HMAC_SHA_512", **extra)
    )
    assert client.get("/metrics").status_code == 200
    assert material_loads() == before


@pytest.mark.parametrize("operation", ["Sign", "Verify"])
def test_a_signing_algorithm_of_another_key_spec_is_invalid_key_usage(
    client: FlaskClient, operation: str
) -> None:
    """AWS KMS answers a SigningAlgorithm the key's spec does not offer (ECDSA on an RSA key)
    with InvalidKeyUsageException, as for an EncryptionAlgorithm."""
    create(client, "rsa", purpose="sign", algorithm="RSA-2048")
    message = base64.b64encode(b"message").decode("ascii")
    extra = (
        {"Signature": base64.b64encode(bytes(64)).decode("ascii")} if operation == "Verify" else {}
    )
    refused_as_invalid_key_usage(
        *aws(
            client,
            operation,
            KeyId="rsa",
            Message=message,
            SigningAlgorithm="ECDSA_SHA_256",
            **extra,
        )
    )


@pytest.mark.parametrize("path", ["/v1/transit/hmac/m/sha2-512", "/v1/transit/verify/m/sha2-512"])
def test_a_refused_vault_hmac_loads_no_key_material(client: FlaskClient, path: str) -> None:
    """docs/vault-transit.md: a sha2-512 HMAC asked of a sha2-256 key is refused before the
    key's secret is looked up."""
    created = client.post("/v1/transit/keys/m", json={"type": "hmac", "key_size": 32})
    assert created.status_code in (200, 204), created.get_json()
    assert client.get("/metrics").status_code == 200
    before = material_loads()
    data = base64.b64encode(b"message").decode("ascii")
    extra = (
        {"hmac": "vault:v1:" + base64.b64encode(bytes(32)).decode("ascii")}
        if "verify" in path
        else {}
    )
    refused = client.post(path, json={"input": data, **extra})
    assert client.get("/metrics").status_code == 200
    assert material_loads() == before
    assert refused.status_code == 400, refused.get_json()
    assert refused.get_json() == {
        "errors": ["algorithm: sha2-512 does not fit this HMAC-SHA256 key"]
    }
