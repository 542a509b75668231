"""The AWS KMS endpoint over a real gunicorn server with mutual TLS, driven by boto3 itself:
every supported operation, AWS's errors as boto3 models them, the policy, audit and rate limits,
one key through both APIs, and signatures checked by ``openssl``."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from kms.api.aws.keys import from_blob, to_blob
from tests.helpers.aws import ARN_PREFIX, kms_client
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    create_key,
    database_unchanged,
    expect_json,
    prepare_deployment,
    unb64,
    unique_key_id,
)
from tests.helpers.identities import audit_records, issue_client_certificate, running_server

pytestmark = pytest.mark.slow

CONTEXT = {"tenant": "acme", "purpose": "test"}
AMZ_JSON = "application/x-amz-json-1.1"


@pytest.fixture(scope="module")
def deployment(aws_deployment: Deployment) -> Deployment:
    return aws_deployment  # the shared server's (tests/http/conftest.py)


@pytest.fixture(scope="module")
def server(aws_server: ServerProcess) -> ServerProcess:
    return aws_server


@pytest.fixture(scope="module")
def kms(server: ServerProcess) -> Any:
    return kms_client(server.deployment)


@pytest.fixture(scope="module")
def native(server: ServerProcess) -> Iterator[KMSClient]:
    client = KMSClient(server.deployment)
    yield client
    client.close()


@pytest.fixture(scope="module")
def symmetric(kms: Any) -> str:
    return kms.create_key(Description="aws tests")["KeyMetadata"]["Arn"]


def error_code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return error.value.response["Error"]["Code"]


# -- keys ---------------------------------------------------------------------------------------


def test_create_and_describe_a_key(kms: Any) -> None:
    created = kms.create_key(
        Description="made by boto3", Tags=[{"TagKey": "team", "TagValue": "payments"}]
    )["KeyMetadata"]
    key_id = created["KeyId"]
    assert created["Arn"] == ARN_PREFIX + key_id
    assert created["KeyState"] == "Enabled" and created["Enabled"] is True
    assert (created["KeySpec"], created["KeyUsage"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    assert created["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert created["AWSAccountId"] == "000000000000"
    # By key id, ARN, alias of its key id and alias ARN: the same key.
    alias_arn = ARN_PREFIX.replace(":key/", ":alias/") + key_id
    for name in (key_id, created["Arn"], f"alias/{key_id}", alias_arn):
        described = kms.describe_key(KeyId=name)["KeyMetadata"]
        assert described["KeyId"] == key_id, name
        assert described["CreationDate"] == created["CreationDate"]
    assert kms.list_resource_tags(KeyId=key_id)["Tags"] == [
        {"TagKey": "team", "TagValue": "payments"}
    ]


@pytest.mark.parametrize(
    ("spec", "usage", "listed"),
    [
        ("RSA_2048", "ENCRYPT_DECRYPT", ("EncryptionAlgorithms", ["RSAES_OAEP_SHA_256"])),
        ("RSA_3072", "SIGN_VERIFY", ("SigningAlgorithms", None)),
        ("ECC_NIST_P256", "SIGN_VERIFY", ("SigningAlgorithms", ["ECDSA_SHA_256"])),
        ("ECC_NIST_P384", "SIGN_VERIFY", ("SigningAlgorithms", ["ECDSA_SHA_384"])),
        ("HMAC_256", "GENERATE_VERIFY_MAC", ("MacAlgorithms", ["HMAC_SHA_256"])),
        ("HMAC_512", "GENERATE_VERIFY_MAC", ("MacAlgorithms", ["HMAC_SHA_512"])),
    ],
)
def test_every_key_spec_is_created(
    kms: Any, spec: str, usage: str, listed: tuple[str, list[str] | None]
) -> None:
    metadata = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
    assert (metadata["KeySpec"], metadata["KeyUsage"]) == (spec, usage)
    field, algorithms = listed
    assert metadata[field] == (algorithms or metadata[field])
    assert metadata[field]


def test_a_spec_that_does_not_fit_its_usage_is_a_validation_error(kms: Any) -> None:
    with pytest.raises(ClientError) as refused:
        kms.create_key(KeySpec="HMAC_256", KeyUsage="ENCRYPT_DECRYPT")
    assert error_code(refused) == "ValidationException"


def test_list_keys_pages_with_limit_and_marker(kms: Any) -> None:
    made = {kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(3)}
    seen: list[str] = []
    marker: dict[str, str] = {}
    while True:
        page = kms.list_keys(Limit=2, **marker)
        assert len(page["Keys"]) <= 2
        seen += [entry["KeyId"] for entry in page["Keys"]]
        assert all(entry["KeyArn"] == ARN_PREFIX + entry["KeyId"] for entry in page["Keys"])
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = {"Marker": page["NextMarker"]}
    assert made <= set(seen)
    assert len(seen) == len(set(seen))
    # The paginator boto3 ships follows the same markers.
    paged = [
        key["KeyId"] for page in kms.get_paginator("list_keys").paginate() for key in page["Keys"]
    ]
    assert paged == seen


def test_list_aliases_names_each_key_by_its_key_id(kms: Any, symmetric: str) -> None:
    key_id = symmetric.removeprefix(ARN_PREFIX)
    aliases = kms.list_aliases(KeyId=symmetric)["Aliases"]
    assert [(a["AliasName"], a["TargetKeyId"]) for a in aliases] == [(f"alias/{key_id}", key_id)]


def test_disable_enable_and_the_disabled_exception(kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.disable_key(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    with pytest.raises(kms.exceptions.DisabledException):
        kms.encrypt(KeyId=key, Plaintext=b"x")
    kms.enable_key(KeyId=key)
    assert kms.encrypt(KeyId=key, Plaintext=b"x")["KeyId"] == ARN_PREFIX + key


def test_schedule_and_cancel_deletion(kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    scheduled = kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    assert scheduled["KeyState"] == "PendingDeletion"
    assert scheduled["PendingWindowInDays"] == 7
    assert scheduled["KeyId"] == ARN_PREFIX + key
    metadata = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert metadata["KeyState"] == "PendingDeletion"
    assert metadata["DeletionDate"] == scheduled["DeletionDate"]
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.encrypt(KeyId=key, Plaintext=b"x")
    with pytest.raises(ClientError) as refused:
        kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=6)
    assert error_code(refused) == "ValidationException"
    assert kms.cancel_key_deletion(KeyId=key)["KeyId"] == ARN_PREFIX + key
    # As in AWS KMS, a key whose deletion is cancelled is disabled.
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"


def test_rotation_settings_and_rotation_on_demand(kms: Any, native: KMSClient) -> None:
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=180)
    status = kms.get_key_rotation_status(KeyId=key)
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 180
    assert "NextRotationDate" in status
    kms.disable_key_rotation(KeyId=key)
    assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False
    old = kms.encrypt(KeyId=key, Plaintext=b"before")["CiphertextBlob"]
    assert kms.rotate_key_on_demand(KeyId=key)["KeyId"] == ARN_PREFIX + key
    assert expect_json(native.get(f"/v1/kms/keys/{key}"), 200)["version"] == 2
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"before"


def test_tags_and_description(kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.tag_resource(
        KeyId=key,
        Tags=[{"TagKey": name, "TagValue": f"v-{name}"} for name in ("a", "b", "c")],
    )
    first = kms.list_resource_tags(KeyId=key, Limit=2)
    assert [tag["TagKey"] for tag in first["Tags"]] == ["a", "b"] and first["Truncated"]
    rest = kms.list_resource_tags(KeyId=key, Limit=2, Marker=first["NextMarker"])
    assert rest["Tags"] == [{"TagKey": "c", "TagValue": "v-c"}] and not rest["Truncated"]
    kms.untag_resource(KeyId=key, TagKeys=["a", "c"])
    assert kms.list_resource_tags(KeyId=key)["Tags"] == [{"TagKey": "b", "TagValue": "v-b"}]
    kms.update_key_description(KeyId=key, Description="renamed")
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["Description"] == "renamed"


# -- cryptography -------------------------------------------------------------------------------


def test_encrypt_decrypt_with_context(kms: Any, symmetric: str) -> None:
    encrypted = kms.encrypt(KeyId=symmetric, Plaintext=b"secret", EncryptionContext=CONTEXT)
    assert encrypted["KeyId"] == symmetric
    assert encrypted["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    blob = encrypted["CiphertextBlob"]
    # Decrypt finds the key from the blob; naming it (any form) is allowed too.
    for named in (
        {},
        {"KeyId": symmetric},
        {"KeyId": "alias/" + symmetric.removeprefix(ARN_PREFIX)},
    ):
        decrypted = kms.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT, **named)
        assert decrypted["Plaintext"] == b"secret"
        assert decrypted["KeyId"] == symmetric
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"tenant": "other"})
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=blob)
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=bytes(tampered), EncryptionContext=CONTEXT)
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=b"not a kms blob")


def test_decrypt_naming_another_key_is_incorrect_key(kms: Any, symmetric: str) -> None:
    other = kms.create_key()["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=symmetric, Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(kms.exceptions.IncorrectKeyException):
        kms.decrypt(CiphertextBlob=blob, KeyId=other)


def test_a_blob_relabelled_with_another_key_does_not_decrypt(kms: Any, symmetric: str) -> None:
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=symmetric, Plaintext=b"x")["CiphertextBlob"]
    _, native_bytes = from_blob(blob)
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=to_blob(other, native_bytes))


def test_re_encrypt_to_another_key_and_context(kms: Any, symmetric: str) -> None:
    destination = kms.create_key()["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=symmetric, Plaintext=b"move me", EncryptionContext=CONTEXT)[
        "CiphertextBlob"
    ]
    moved = kms.re_encrypt(
        CiphertextBlob=blob,
        SourceEncryptionContext=CONTEXT,
        DestinationKeyId=destination,
        DestinationEncryptionContext={"new": "context"},
    )
    assert (moved["SourceKeyId"], moved["KeyId"]) == (symmetric, destination)
    decrypted = kms.decrypt(
        CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"new": "context"}
    )
    assert (decrypted["Plaintext"], decrypted["KeyId"]) == (b"move me", destination)


def test_data_keys(kms: Any, symmetric: str) -> None:
    for spec, size in (
        ({"KeySpec": "AES_256"}, 32),
        ({"KeySpec": "AES_128"}, 16),
        ({"NumberOfBytes": 24}, 24),
    ):
        data_key = kms.generate_data_key(KeyId=symmetric, EncryptionContext=CONTEXT, **spec)
        assert len(data_key["Plaintext"]) == size
        assert data_key["KeyId"] == symmetric
        opened = kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext=CONTEXT)
        assert opened["Plaintext"] == data_key["Plaintext"]
    wrapped = kms.generate_data_key_without_plaintext(KeyId=symmetric, KeySpec="AES_256")
    assert "Plaintext" not in wrapped
    assert len(kms.decrypt(CiphertextBlob=wrapped["CiphertextBlob"])["Plaintext"]) == 32
    with pytest.raises(ClientError) as refused:
        kms.generate_data_key(KeyId=symmetric)
    assert error_code(refused) == "ValidationException"


def test_generate_random(kms: Any) -> None:
    assert len(kms.generate_random(NumberOfBytes=1024)["Plaintext"]) == 1024
    with pytest.raises(ClientError) as refused:
        kms.generate_random(NumberOfBytes=1025)
    assert error_code(refused) in ("ValidationException", "ParamValidation")


def test_rsa_encryption_key(kms: Any) -> None:
    key = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
    encrypted = kms.encrypt(KeyId=key, Plaintext=b"oaep", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    opened = kms.decrypt(
        CiphertextBlob=encrypted["CiphertextBlob"], EncryptionAlgorithm="RSAES_OAEP_SHA_256"
    )
    assert opened["Plaintext"] == b"oaep"
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionAlgorithm="SYMMETRIC_DEFAULT")


SIGNING_CASES = [
    ("RSA_2048", "RSASSA_PSS_SHA_256", "sha256"),
    ("RSA_3072", "RSASSA_PSS_SHA_512", "sha512"),
    ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_384", "sha384"),
    ("ECC_NIST_P256", "ECDSA_SHA_256", "sha256"),
    ("ECC_NIST_P384", "ECDSA_SHA_384", "sha384"),
]


@pytest.mark.parametrize(("spec", "algorithm", "digest"), SIGNING_CASES)
def test_sign_verify_raw_and_digest(kms: Any, spec: str, algorithm: str, digest: str) -> None:
    key = kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    message = b"an AWS message"
    raw = kms.sign(KeyId=key, Message=message, SigningAlgorithm=algorithm)
    assert (raw["KeyId"], raw["SigningAlgorithm"]) == (key, algorithm)
    prehashed = hashlib.new(digest, message).digest()
    for signature in (
        raw["Signature"],
        kms.sign(KeyId=key, Message=prehashed, MessageType="DIGEST", SigningAlgorithm=algorithm)[
            "Signature"
        ],
    ):
        verified = kms.verify(
            KeyId=key, Message=message, Signature=signature, SigningAlgorithm=algorithm
        )
        assert verified["SignatureValid"] is True
        assert kms.verify(
            KeyId=key,
            Message=prehashed,
            MessageType="DIGEST",
            Signature=signature,
            SigningAlgorithm=algorithm,
        )["SignatureValid"]
    with pytest.raises(kms.exceptions.KMSInvalidSignatureException):
        kms.verify(
            KeyId=key, Message=b"other", Signature=raw["Signature"], SigningAlgorithm=algorithm
        )


@pytest.mark.needs("openssl")
@pytest.mark.parametrize(("spec", "algorithm", "digest"), SIGNING_CASES)
def test_a_signature_verifies_with_openssl_over_get_public_key(
    kms: Any, tmp_path: Path, spec: str, algorithm: str, digest: str
) -> None:
    key = kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    public = kms.get_public_key(KeyId=key)
    assert (public["KeySpec"], public["KeyUsage"]) == (spec, "SIGN_VERIFY")
    assert algorithm in public["SigningAlgorithms"]
    (tmp_path / "key.der").write_bytes(public["PublicKey"])
    message = tmp_path / "message"
    message.write_bytes(b"verify me with openssl")
    signature = tmp_path / "signature"
    signature.write_bytes(
        kms.sign(KeyId=key, Message=message.read_bytes(), SigningAlgorithm=algorithm)["Signature"]
    )
    options = ["-sigopt", "rsa_padding_mode:pss"] if "PSS" in algorithm else []

    def openssl_verifies(path: Path) -> bool:
        result = subprocess.run(
            ["openssl", "dgst", f"-{digest}", *options, "-keyform", "DER",
             "-verify", str(tmp_path / "key.der"), "-signature", str(signature), str(path)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        return result.returncode == 0 and "Verified OK" in result.stdout

    assert openssl_verifies(message)
    other = tmp_path / "other"
    other.write_bytes(b"not what was signed")
    assert not openssl_verifies(other)


def test_generate_and_verify_mac(kms: Any) -> None:
    key = kms.create_key(KeySpec="HMAC_512", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    mac = kms.generate_mac(KeyId=key, Message=b"m", MacAlgorithm="HMAC_SHA_512")
    assert len(mac["Mac"]) == 64 and mac["KeyId"] == key
    assert kms.verify_mac(KeyId=key, Message=b"m", Mac=mac["Mac"], MacAlgorithm="HMAC_SHA_512")[
        "MacValid"
    ]
    with pytest.raises(kms.exceptions.KMSInvalidMacException):
        kms.verify_mac(KeyId=key, Message=b"n", Mac=mac["Mac"], MacAlgorithm="HMAC_SHA_512")
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.generate_mac(KeyId=key, Message=b"m", MacAlgorithm="HMAC_SHA_256")


# -- errors -------------------------------------------------------------------------------------


def test_errors_come_back_as_the_classes_boto3_models(kms: Any, symmetric: str) -> None:
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId="no-such-key")
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId="arn:aws:kms:eu-west-1:111111111111:key/" + symmetric[-36:])
    sign_key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.encrypt(KeyId=sign_key, Plaintext=b"x")
    with pytest.raises(kms.exceptions.UnsupportedOperationException) as unsupported:
        kms.create_grant(KeyId=symmetric, GranteePrincipal="someone", Operations=["Decrypt"])
    assert "CreateGrant" in unsupported.value.response["Error"]["Message"]


def test_aws_length_limits_are_validation_errors(
    deployment: Deployment, server: ServerProcess, symmetric: str
) -> None:
    # boto3 checks the model's limits itself; without that, the server's own answer shows.
    unchecked = kms_client(deployment, parameter_validation=False)
    for call in (
        lambda: unchecked.encrypt(KeyId=symmetric, Plaintext=b"x" * 4097),
        lambda: unchecked.encrypt(KeyId=symmetric, Plaintext=b""),
        lambda: unchecked.generate_random(NumberOfBytes=1025),
        lambda: unchecked.schedule_key_deletion(KeyId=symmetric, PendingWindowInDays=31),
    ):
        with pytest.raises(ClientError) as refused:
            call()
        assert error_code(refused) == "ValidationException"


def test_every_answer_has_a_request_id_and_the_aws_media_type(
    deployment: Deployment, server: ServerProcess, symmetric: str
) -> None:
    session = requests.Session()
    session.trust_env = False
    session.cert = (str(deployment.client_cert), str(deployment.client_key))
    session.verify = str(deployment.ca_cert)
    headers = {"Content-Type": AMZ_JSON}

    def call(target: str, body: dict[str, Any]) -> requests.Response:
        return session.post(
            deployment.base_url + "/",
            data=json.dumps(body),
            headers={**headers, "X-Amz-Target": f"TrentService.{target}"},
        )

    for response in (
        call("Encrypt", {"KeyId": symmetric, "Plaintext": b64(b"x")}),
        call("DescribeKey", {"KeyId": "missing"}),
        call("Encrypt", {"KeyId": symmetric, "Plaintext": b64(b"x"), "DryRun": True}),
        call("CreateGrant", {}),
        call("NoSuchThing", {}),
    ):
        assert response.headers["x-amzn-RequestId"], response.headers
        if "X-Request-Id" in response.headers:  # through the app: the one request id
            assert response.headers["x-amzn-RequestId"] == response.headers["X-Request-Id"]
        assert response.headers["Content-Type"] == AMZ_JSON
        assert "Traceback" not in response.text
    assert call("DescribeKey", {"KeyId": "missing"}).json()["__type"] == "NotFoundException"
    refused = call("Encrypt", {"KeyId": symmetric, "Plaintext": b64(b"x"), "DryRun": True})
    assert (refused.status_code, refused.json()["__type"]) == (400, "ValidationException")
    assert "DryRun" in refused.json()["message"]
    assert call("NoSuchThing", {}).json()["__type"] == "UnknownOperationException"
    not_json = session.post(
        deployment.base_url + "/",
        data="{",
        headers={**headers, "X-Amz-Target": "TrentService.Encrypt"},
    )
    assert (not_json.status_code, not_json.json()["__type"]) == (400, "ValidationException")


def test_a_failed_request_changes_nothing(deployment: Deployment, kms: Any, symmetric: str) -> None:
    with database_unchanged(deployment.database):
        for bad in (
            lambda: kms.create_key(KeySpec="HMAC_256", KeyUsage="ENCRYPT_DECRYPT"),
            lambda: kms.tag_resource(
                KeyId=symmetric, Tags=[{"TagKey": "Upper Case", "TagValue": ""}]
            ),
            lambda: kms.schedule_key_deletion(KeyId="no-such-key"),
        ):
            with pytest.raises(ClientError):
                bad()


# -- one key, every API; the hooks ---------------------------------------------------------------


def test_a_native_key_works_through_aws_and_back(kms: Any, native: KMSClient) -> None:
    key_id = create_key(native, key_id=unique_key_id("native-aws"))["key_id"]
    # Natively encrypted, decrypted through AWS: the blob is the native ciphertext behind a header.
    native_ciphertext = expect_json(
        native.post(
            "/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(b"n2a"), "context": CONTEXT}
        ),
        200,
    )["ciphertext"]
    blob = to_blob(key_id, unb64(native_ciphertext))
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)["Plaintext"] == b"n2a"
    # Encrypted through AWS (as alias/<key_id>), decrypted natively.
    encrypted = kms.encrypt(KeyId=f"alias/{key_id}", Plaintext=b"a2n", EncryptionContext=CONTEXT)
    assert encrypted["KeyId"] == ARN_PREFIX + key_id
    named, native_bytes = from_blob(encrypted["CiphertextBlob"])
    assert named == key_id
    opened = expect_json(
        native.post(
            "/v1/kms/decrypt",
            json={"key_id": key_id, "ciphertext": b64(native_bytes), "context": CONTEXT},
        ),
        200,
    )
    assert unb64(opened["plaintext"]) == b"a2n"


def test_unsigned_requests_work_and_the_signature_is_never_logged(
    deployment: Deployment, server: ServerProcess, kms: Any, symmetric: str
) -> None:
    unsigned = kms_client(deployment, signed=False)
    assert unsigned.encrypt(KeyId=symmetric, Plaintext=b"u")["KeyId"] == symmetric
    kms.encrypt(KeyId=symmetric, Plaintext=b"signed")  # carries Authorization: AWS4-HMAC-SHA256
    logged = server.output() + deployment.audit_log.read_text("utf-8")
    assert "AWS4-HMAC-SHA256" not in logged
    assert "AKIDEXAMPLE" not in logged


def test_policy_and_audit_use_the_native_operation_names(
    deployment: Deployment, server: ServerProcess, kms: Any, symmetric: str
) -> None:
    cert, key = issue_client_certificate(deployment, "aws-encrypt-only", "aws-encrypt-only")
    limited = kms_client(deployment, cert, key)
    blob = limited.encrypt(KeyId=symmetric, Plaintext=b"p")["CiphertextBlob"]
    with pytest.raises(ClientError) as denied:
        limited.decrypt(CiphertextBlob=blob)
    assert error_code(denied) == "AccessDeniedException"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    records = audit_records(deployment)
    key_id = symmetric.removeprefix(ARN_PREFIX)
    encrypts = [
        r for r in records
        if r.get("identity") == "aws-encrypt-only" and r.get("operation") == "encrypt"
    ]  # fmt: skip
    assert {r["type"] for r in encrypts} == {"response"}  # a use of a key: one line each
    assert all(r["key_id"] == key_id and r["path"] == "/v1/aws-kms/Encrypt" for r in encrypts)
    # The owner's decrypt through AWS is audited as "decrypt" on the key the blob names.
    kms.decrypt(CiphertextBlob=blob)
    decrypts = [
        r for r in audit_records(deployment)
        if r.get("operation") == "decrypt" and r.get("key_id") == key_id and r["type"] == "response"
    ]  # fmt: skip
    assert decrypts and decrypts[-1]["status"] == 200


def test_re_encrypt_to_another_key_needs_encrypt_on_it(
    deployment: Deployment, server: ServerProcess, kms: Any, native: KMSClient
) -> None:
    source = create_key(native, key_id=unique_key_id("src"))["key_id"]
    other_source = create_key(native, key_id=unique_key_id("src"))["key_id"]
    outside = create_key(native, key_id=unique_key_id("dst"))["key_id"]
    blob = kms.encrypt(KeyId=source, Plaintext=b"r")["CiphertextBlob"]
    cert, key = issue_client_certificate(deployment, "aws-rewrap", "aws-rewrap")
    rewrapper = kms_client(deployment, cert, key)
    for destination in (source, other_source):
        moved = rewrapper.re_encrypt(CiphertextBlob=blob, DestinationKeyId=destination)
        assert moved["KeyId"] == ARN_PREFIX + destination
    with pytest.raises(ClientError) as denied:
        rewrapper.re_encrypt(CiphertextBlob=blob, DestinationKeyId=outside)
    assert error_code(denied) == "AccessDeniedException"
    # Nor may it open a blob of a key outside its rules, whatever the destination.
    outside_blob = kms.encrypt(KeyId=outside, Plaintext=b"r")["CiphertextBlob"]
    with pytest.raises(ClientError) as denied:
        rewrapper.re_encrypt(CiphertextBlob=outside_blob, DestinationKeyId=source)
    assert error_code(denied) == "AccessDeniedException"


@pytest.fixture(scope="module")
def throttled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = prepare_deployment(
        tmp_path_factory.mktemp("kms-aws-throttle"), rate_limit={"rate": 0.001, "burst": 3}
    )
    with running_server(deployment):
        yield deployment


def test_rate_limits_answer_throttling_exception_and_boto3_backs_off(
    throttled: Deployment,
) -> None:
    # The harness's readiness probe spent one token; two are left.
    client = kms_client(throttled, retries={"mode": "standard", "max_attempts": 2})
    client.generate_random(NumberOfBytes=8)
    client.generate_random(NumberOfBytes=8)
    with pytest.raises(ClientError) as throttled_error:
        client.generate_random(NumberOfBytes=8)
    assert error_code(throttled_error) == "ThrottlingException"
    # botocore recognised the code as throttling and retried before giving up; an error it
    # does not retry (a client error) shows none.
    assert throttled_error.value.response["ResponseMetadata"]["RetryAttempts"] >= 1
