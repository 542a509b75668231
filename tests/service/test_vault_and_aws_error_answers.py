"""The error map's Vault and AWS shapes (kms.api.errors), through the app's test client: the
statuses and words docs/vault-transit.md's error table and docs/aws-kms.md promise, which
hvac and the AWS SDKs match on."""

from __future__ import annotations

import base64
import json
import logging

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from marshmallow import ValidationError

from kms import errors
from kms.api.errors import register_aws_error_shape, vault_error, vault_item_error
from tests.helpers.aws_wire import aws


def test_a_missing_key_is_vault_s_empty_404_where_vault_answers_so(client: FlaskClient) -> None:
    """Read, export (of a version too) and list with no keys: 404 `[]` (hvac's InvalidPath)."""
    for method, path in [
        ("GET", "/v1/transit/keys/nope"),
        ("LIST", "/v1/transit/keys"),
        ("GET", "/v1/transit/export/encryption-key/nope"),
        ("GET", "/v1/transit/export/encryption-key/nope/1"),
        ("GET", "/v1/transit/backup/nope"),
    ]:
        response = client.open(path, method=method)
        assert (response.status_code, response.get_json()) == (404, {"errors": []}), path


def test_deleting_a_missing_key_is_vault_s_400(client: FlaskClient) -> None:
    response = client.delete("/v1/transit/keys/nope")
    assert response.status_code == 400
    assert response.get_json() == {
        "errors": ["error deleting policy nope: could not delete key; not found"]
    }


def test_a_method_a_vault_path_does_not_take_is_405_unsupported_operation(
    client: FlaskClient,
) -> None:
    response = client.put("/v1/transit/encrypt/k")
    assert (response.status_code, response.get_json()) == (
        405,
        {"errors": ["unsupported operation"]},
    )
    response = client.get("/v1/transit/no-such-path")
    assert (response.status_code, response.get_json()) == (404, {"errors": ["unsupported path"]})


def test_a_policy_refusal_on_a_vault_route_is_403_permission_denied(app: Flask) -> None:
    with app.test_request_context("/v1/transit/encrypt/k", method="POST"):
        assert vault_error(errors.Forbidden()) == (403, "permission denied")


def test_a_server_fault_s_words_never_reach_a_vault_client(app: Flask) -> None:
    """A fault's message is for the log (docs/vault-transit.md): `vault_error` answers a 500 as
    `internal error` wherever it is called from, a batch item's error included."""
    fault = errors.KMSError("a fault's own words, for the log only")  # unmapped: a 500
    with app.test_request_context("/v1/transit/decrypt/k", method="POST"):
        assert vault_error(fault) == (500, "internal error")
        assert vault_item_error(fault) == "internal error"
        unavailable = errors.StoreUnavailable()
        assert vault_error(unavailable) == (503, unavailable.public_message)


def aws_app() -> Flask:
    app = Flask(__name__)
    blueprint = Blueprint("aws_shape", __name__)
    raised: dict[str, Exception] = {
        "store": errors.StoreUnavailable(),
        "integrity": errors.IntegrityFailure("key k row 3: its MAC does not match"),
        "invalid": ValidationError({"KeyId": ["Missing data for required field."]}),
        "unmapped": errors.KMSError("a fault's own words, for the log only"),
        "bug": RuntimeError("a bug's own words, for the log only"),
    }

    @blueprint.post("/<name>")
    def fail(name: str) -> str:
        raise raised[name]

    register_aws_error_shape(blueprint)
    app.register_blueprint(blueprint)
    return app


def test_aws_answers_a_server_fault_without_its_detail_and_a_503_with_its_message() -> None:
    """docs/aws-kms.md: KMSInternalException, 500 for a fault (detail in the server log only),
    503 when storage or the audit log is unavailable (a message that says to retry); a body the
    schema refuses is a ValidationException, 400."""
    client = Flask.test_client(aws_app())
    fault = client.post("/integrity")
    assert (fault.status_code, json.loads(fault.data)) == (
        500,
        {"__type": "KMSInternalException", "message": "internal error"},
    )
    unavailable = client.post("/store")
    assert (unavailable.status_code, json.loads(unavailable.data)) == (
        503,
        {"__type": "KMSInternalException", "message": "storage unavailable, retry later"},
    )
    invalid = client.post("/invalid")
    assert invalid.status_code == 400
    assert json.loads(invalid.data)["__type"] == "ValidationException"


def test_aws_logs_a_server_fault_and_answers_none_of_its_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/aws-kms.md: a fault's detail is in the server log only; whatever words an unmapped
    error carries, the client reads `internal error`."""
    client = Flask.test_client(aws_app())
    with caplog.at_level(logging.ERROR, logger="kms"):
        client.post("/integrity")
    assert "failed: IntegrityFailure" in caplog.text
    unmapped = client.post("/unmapped")
    assert (unmapped.status_code, json.loads(unmapped.data)) == (
        500,
        {"__type": "KMSInternalException", "message": "internal error"},
    )


def test_aws_answers_a_bug_as_an_internal_error_and_logs_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a KMSError at all: the client reads KMSInternalException `internal error`, the
    operator finds the traceback in the server log."""
    client = Flask.test_client(aws_app())
    with caplog.at_level(logging.ERROR, logger="kms"):
        bug = client.post("/bug")
    assert (bug.status_code, json.loads(bug.data)) == (
        500,
        {"__type": "KMSInternalException", "message": "internal error"},
    )
    [record] = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert record.exc_info is not None and "a bug's own words" in caplog.text


def test_aws_refuses_an_encryption_algorithm_that_does_not_fit_the_blob_s_key(
    client: FlaskClient,
) -> None:
    """docs/aws-kms.md, InvalidKeyUsageException: the algorithm does not fit the key. An RSA
    blob decrypted as SYMMETRIC_DEFAULT, or re-encrypted (symmetric only), is refused and its
    plaintext is not answered."""
    _, created = aws(client, "CreateKey", KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    rsa = created["KeyMetadata"]["KeyId"]
    _, created = aws(client, "CreateKey")
    symmetric = created["KeyMetadata"]["KeyId"]
    plaintext = base64.b64encode(b"oaep").decode()
    status, encrypted = aws(
        client, "Encrypt", KeyId=rsa, Plaintext=plaintext, EncryptionAlgorithm="RSAES_OAEP_SHA_256"
    )
    assert status == 200, encrypted
    blob = encrypted["CiphertextBlob"]
    status, opened = aws(
        client, "Decrypt", CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_256"
    )
    assert (status, opened["Plaintext"]) == (200, plaintext)
    status, refused = aws(client, "Decrypt", CiphertextBlob=blob)
    assert (status, refused["__type"]) == (400, "InvalidKeyUsageException")
    assert "Plaintext" not in refused
    status, refused = aws(client, "ReEncrypt", CiphertextBlob=blob, DestinationKeyId=symmetric)
    assert (status, refused["__type"]) == (400, "InvalidKeyUsageException"), refused
    assert "CiphertextBlob" not in refused


# -- Vault requests kms answers as Vault does (docs/vault-transit.md) ----------------------------


def test_a_vault_option_kms_does_not_offer_is_refused_unless_off(client: FlaskClient) -> None:
    """`derived`, `convergent_encryption`, `exportable`, `allow_plaintext_backup` true: refused,
    nothing made; their off values are accepted and dropped."""
    for option in ("derived", "convergent_encryption", "exportable", "allow_plaintext_backup"):
        response = client.post("/v1/transit/keys/k", json={option: True})
        assert response.status_code == 400, option
    assert client.get("/v1/transit/keys/k").status_code == 404
    off = {"derived": False, "convergent_encryption": None, "exportable": 0}
    assert client.post("/v1/transit/keys/k", json=off).status_code in (200, 204)


def test_vault_s_min_decryption_version_0_is_the_first_version(client: FlaskClient) -> None:
    assert client.post("/v1/transit/keys/k", json={}).status_code in (200, 204)
    response = client.post("/v1/transit/keys/k/config", json={"min_decryption_version": 0})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["data"]["min_decryption_version"] == 1


def test_a_vault_hmac_verified_under_another_digest_is_refused(client: FlaskClient) -> None:
    """docs/vault-transit.md: a MAC key computes one HMAC, and `algorithm` (in the path or the
    body; sha2-256 when left out) must name it: a sha2-256 HMAC is not checked as sha2-512."""
    created = client.post("/v1/transit/keys/m", json={"type": "hmac", "key_size": 32})
    assert created.status_code in (200, 204), created.get_json()
    data = base64.b64encode(b"message").decode()
    mac = client.post("/v1/transit/hmac/m", json={"input": data}).get_json()["data"]["hmac"]
    checked = client.post("/v1/transit/verify/m", json={"input": data, "hmac": mac})
    assert checked.get_json()["data"]["valid"] is True
    for path, body in [
        ("/v1/transit/verify/m/sha2-512", {}),
        ("/v1/transit/verify/m", {"algorithm": "sha2-512"}),
    ]:
        refused = client.post(path, json={"input": data, "hmac": mac, **body})
        assert refused.status_code == 400, (path, refused.get_json())
        assert refused.get_json()["errors"] == [
            "algorithm: sha2-512 does not fit this HMAC-SHA256 key"
        ]


def test_aws_generate_data_key_without_plaintext_answers_no_plaintext(
    client: FlaskClient,
) -> None:
    _, created = aws(client, "CreateKey")
    key = created["KeyMetadata"]["KeyId"]
    status, answer = aws(client, "GenerateDataKeyWithoutPlaintext", KeyId=key, KeySpec="AES_256")
    assert status == 200, answer
    assert "CiphertextBlob" in answer and "Plaintext" not in answer
    status, answer = aws(client, "GenerateDataKey", KeyId=key, KeySpec="AES_256")
    assert status == 200 and len(base64.b64decode(answer["Plaintext"])) == 32


def test_aws_re_encrypt_to_an_rsa_key_is_refused(client: FlaskClient) -> None:
    """ReEncrypt is symmetric on both sides (SYMMETRIC_DEFAULT): an RSA destination does not fit."""
    _, created = aws(client, "CreateKey", KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    rsa = created["KeyMetadata"]["KeyId"]
    _, created = aws(client, "CreateKey")
    symmetric = created["KeyMetadata"]["KeyId"]
    plaintext = base64.b64encode(b"x").decode()
    _, encrypted = aws(client, "Encrypt", KeyId=symmetric, Plaintext=plaintext)
    status, refused = aws(
        client, "ReEncrypt", CiphertextBlob=encrypted["CiphertextBlob"], DestinationKeyId=rsa
    )
    assert (status, refused["__type"]) == (400, "InvalidKeyUsageException"), refused


def test_aws_list_aliases_pages_with_a_marker(client: FlaskClient) -> None:
    for _ in range(2):
        aws(client, "CreateKey")
    status, first = aws(client, "ListAliases", Limit=1)
    assert status == 200 and len(first["Aliases"]) == 1
    assert first["Truncated"] is True and "NextMarker" in first
    _, second = aws(client, "ListAliases", Limit=1, Marker=first["NextMarker"])
    assert len(second["Aliases"]) == 1 and second["Aliases"] != first["Aliases"]
    _, whole = aws(client, "ListAliases", Limit=3)
    assert len(whole["Aliases"]) == 2
    assert whole["Truncated"] is False and "NextMarker" not in whole


def test_an_arn_of_our_account_that_names_no_key_or_alias_is_not_found(
    client: FlaskClient,
) -> None:
    """docs/aws-kms.md: a key ARN is `...:key/<id>`, an alias ARN `...:alias/<name>`; an ARN of
    our region and account with another resource names no key of ours."""
    _, created = aws(client, "CreateKey")
    arn = created["KeyMetadata"]["Arn"]
    status, found = aws(client, "DescribeKey", KeyId=arn)
    assert status == 200, found
    status, refused = aws(client, "DescribeKey", KeyId=arn.replace(":key/", ":"))
    assert (status, refused["__type"]) == (400, "NotFoundException")
