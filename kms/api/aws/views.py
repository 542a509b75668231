"""The AWS KMS operations on keys and the cryptographic operations kms serves, each mapped onto a
native operation name and service call (aliases and rotations: kms.api.aws.aliases).

Each view loads AWS's request with a schema (``kms.api.aws.schemas``), resolves AWS's key
identifiers (``kms.api.aws.requests.key_id_of``), calls the service, and answers AWS's response
fields. Errors are the domain exceptions, answered in AWS's shape by ``kms.api.errors``.
"""

from __future__ import annotations

import base64
from typing import Any

from flask import Response

from kms.api.aws import schemas as aws
from kms.api.aws.keys import (
    DATA_KEY_BYTES,
    DATA_KEY_FIT,
    SIGNING,
    SIGNING_ALGORITHMS_OF,
    SPEC_OF_ALGORITHM,
    encryption_fit,
    epoch,
    key_metadata,
    mac_fit,
    native_algorithm,
    signing_fit,
    to_blob,
)
from kms.api.aws.requests import (
    NOT_FOUND,
    account,
    b64,
    blueprint,
    documented_aws,
    key_id_of,
    key_named_in,
    key_of_blob,
    load,
    opened_blob,
    page_reply,
    reply,
)
from kms.api.context import note_rows_examined, service
from kms.api.operations import KeyFrom, Target, operation
from kms.api.policy import keys_in_scope, readable_key_patterns
from kms.crypto.algorithms import RSA_ENCRYPTION_ALGORITHMS
from kms.errors import (
    Forbidden,
    InvalidMAC,
    InvalidRequest,
    InvalidSignature,
    PurposeMismatch,
)

__all__ = ["blueprint"]


# -- keys ---------------------------------------------------------------------------------------


@blueprint.post("/CreateKey")
@operation("keys:create", KeyFrom.BODY, target=lambda _request: Target(key_id=None))
@documented_aws("AWS KMS CreateKey", aws.create_key_request, {400: "ValidationException"})
def create_key() -> Response:
    body = load(aws.create_key_request)
    purpose, algorithm = native_algorithm(body["KeySpec"], body["KeyUsage"])
    labels = {tag["TagKey"]: tag["TagValue"] for tag in body["Tags"]}
    key = service().create_key(
        purpose=purpose, algorithm=algorithm, description=body["Description"], labels=labels
    )
    return reply({"KeyMetadata": key_metadata(key, account())}, version=key.version)


@blueprint.post("/DescribeKey")
@operation("keys:read", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS DescribeKey", aws.key_request, NOT_FOUND)
def describe_key() -> Response:
    key = service().get_key(key_id_of(load(aws.key_request)["KeyId"]))
    return reply({"KeyMetadata": key_metadata(key, account())})


@blueprint.post("/ListKeys")
@operation("keys:read")
@documented_aws("AWS KMS ListKeys", aws.list_keys_request, {400: "ValidationException"})
def list_keys() -> Response:
    body = load(aws.list_keys_request)
    page = service().list_page(
        limit=body["Limit"], after=body["Marker"], key_patterns=readable_key_patterns()
    )
    note_rows_examined(page.rows_examined)
    keys = [{"KeyId": key.key_id, "KeyArn": account().key_arn(key.key_id)} for key in page.keys]
    return page_reply("Keys", keys, page.next_after)


@blueprint.post("/EnableKey")
@operation("keys:enable", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS EnableKey", aws.key_request, NOT_FOUND)
def enable_key() -> Response:
    service().enable_key(key_id_of(load(aws.key_request)["KeyId"]))
    return reply({})


@blueprint.post("/DisableKey")
@operation("keys:disable", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS DisableKey", aws.key_request, NOT_FOUND)
def disable_key() -> Response:
    service().disable_key(key_id_of(load(aws.key_request)["KeyId"]))
    return reply({})


@blueprint.post("/UpdateKeyDescription")
@operation("keys:update", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS UpdateKeyDescription", aws.update_description_request, NOT_FOUND)
def update_key_description() -> Response:
    body = load(aws.update_description_request)
    service().update_key(key_id_of(body["KeyId"]), description=body["Description"])
    return reply({})


@blueprint.post("/ScheduleKeyDeletion")
@operation("keys:delete", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS ScheduleKeyDeletion", aws.schedule_deletion_request, NOT_FOUND)
def schedule_key_deletion() -> Response:
    body = load(aws.schedule_deletion_request)
    key_id = key_id_of(body["KeyId"])
    days = body["PendingWindowInDays"]
    key = service().delete_key(key_id, pending_days=days)
    if key is None or key.pending_deletion_at is None:  # a window is always given
        raise InvalidRequest("the key was not scheduled for deletion")
    return reply(
        {
            "KeyId": account().key_arn(key_id),
            "DeletionDate": epoch(key.pending_deletion_at),
            "KeyState": "PendingDeletion",
            "PendingWindowInDays": days,
        }
    )


@blueprint.post("/CancelKeyDeletion")
@operation("keys:cancel-deletion", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS CancelKeyDeletion (the key is then Disabled)", aws.key_request, NOT_FOUND)
def cancel_key_deletion() -> Response:
    key_id = key_id_of(load(aws.key_request)["KeyId"])
    service().cancel_deletion(key_id)
    return reply({"KeyId": account().key_arn(key_id)})


@blueprint.post("/EnableKeyRotation")
@operation("keys:update", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS EnableKeyRotation", aws.enable_rotation_request, NOT_FOUND)
def enable_key_rotation() -> Response:
    body = load(aws.enable_rotation_request)
    key_id = key_id_of(body["KeyId"])
    service().update_key(key_id, rotation_period=f"{body['RotationPeriodInDays']}d")
    return reply({})


@blueprint.post("/DisableKeyRotation")
@operation("keys:update", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS DisableKeyRotation", aws.key_request, NOT_FOUND)
def disable_key_rotation() -> Response:
    service().update_key(key_id_of(load(aws.key_request)["KeyId"]), rotation_period=None)
    return reply({})


@blueprint.post("/GetKeyRotationStatus")
@operation("keys:read", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS GetKeyRotationStatus", aws.key_request, NOT_FOUND)
def get_key_rotation_status() -> Response:
    key_id = key_id_of(load(aws.key_request)["KeyId"])
    key = service().get_key(key_id)
    document: dict[str, Any] = {
        "KeyId": account().key_arn(key_id),
        "KeyRotationEnabled": key.rotation_period is not None,
    }
    if key.rotation_period is not None:
        # kms keeps "<n>d" or "<n>h"; AWS counts whole days.
        amount, unit = int(key.rotation_period[:-1]), key.rotation_period[-1]
        document["RotationPeriodInDays"] = amount if unit == "d" else max(1, amount // 24)
    if key.next_rotation_at is not None:
        document["NextRotationDate"] = epoch(key.next_rotation_at)
    return reply(document)


@blueprint.post("/RotateKeyOnDemand")
@operation("keys:rotate", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS RotateKeyOnDemand", aws.key_request, NOT_FOUND)
def rotate_key_on_demand() -> Response:
    key_id = key_id_of(load(aws.key_request)["KeyId"])
    key = service().rotate_key(key_id)
    return reply({"KeyId": account().key_arn(key_id)}, version=key.version)


@blueprint.post("/TagResource")
@operation("keys:update", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS TagResource: tags are kms labels", aws.tag_resource_request, NOT_FOUND)
def tag_resource() -> Response:
    body = load(aws.tag_resource_request)
    key_id = key_id_of(body["KeyId"])
    labels = dict(service().get_key(key_id).labels)
    labels.update({tag["TagKey"]: tag["TagValue"] for tag in body["Tags"]})
    service().update_key(key_id, labels=labels)
    return reply({})


@blueprint.post("/UntagResource")
@operation("keys:update", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS UntagResource", aws.untag_resource_request, NOT_FOUND)
def untag_resource() -> Response:
    body = load(aws.untag_resource_request)
    key_id = key_id_of(body["KeyId"])
    labels = dict(service().get_key(key_id).labels)
    for name in body["TagKeys"]:
        labels.pop(name, None)
    service().update_key(key_id, labels=labels)
    return reply({})


@blueprint.post("/ListResourceTags")
@operation("keys:read", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS ListResourceTags", aws.list_tags_request, NOT_FOUND)
def list_resource_tags() -> Response:
    body = load(aws.list_tags_request)
    labels = sorted(service().get_key(key_id_of(body["KeyId"])).labels.items())
    start = 0
    if body["Marker"] is not None:
        start = next((i + 1 for i, (name, _) in enumerate(labels) if name == body["Marker"]), 0)
    page = labels[start : start + body["Limit"]]
    more = start + len(page) < len(labels)
    tags = [{"TagKey": name, "TagValue": value} for name, value in page]
    return page_reply("Tags", tags, page[-1][0] if more else None)


@blueprint.post("/GetPublicKey")
@operation("keys:read", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS GetPublicKey (DER SubjectPublicKeyInfo)", aws.key_request, NOT_FOUND)
def get_public_key() -> Response:
    key_id = key_id_of(load(aws.key_request)["KeyId"])
    public = service().public_key(key_id)
    der = base64.b64decode("".join(public.public_key.strip().splitlines()[1:-1]))
    document: dict[str, Any] = {
        "KeyId": account().key_arn(key_id),
        "PublicKey": b64(der),
        "KeySpec": SPEC_OF_ALGORITHM[public.algorithm],
        "CustomerMasterKeySpec": SPEC_OF_ALGORITHM[public.algorithm],
    }
    if public.algorithm in RSA_ENCRYPTION_ALGORITHMS:
        document["KeyUsage"] = "ENCRYPT_DECRYPT"
        document["EncryptionAlgorithms"] = ["RSAES_OAEP_SHA_256"]
    else:
        document["KeyUsage"] = "SIGN_VERIFY"
        document["SigningAlgorithms"] = SIGNING_ALGORITHMS_OF[public.algorithm]
    return reply(document, version=public.version)


# -- cryptography -------------------------------------------------------------------------------


def _key_reply(key_id: str, result: Any, **fields: Any) -> Response:
    """The answer to a call on one key: ``KeyId`` (its ARN), then AWS's ``fields``; the version
    and algorithm the call used go to the audit line and the metrics."""
    document = {"KeyId": account().key_arn(key_id), **fields}
    return reply(document, version=result.version, algorithm=result.algorithm)


@blueprint.post("/Encrypt")
@operation("encrypt", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS Encrypt", aws.encrypt_request, NOT_FOUND)
def encrypt() -> Response:
    body = load(aws.encrypt_request)
    key_id = key_id_of(body["KeyId"])
    result = service().encrypt(
        key_id,
        body["Plaintext"],
        body["EncryptionContext"],
        fit=encryption_fit(body["EncryptionAlgorithm"]),
    )
    blob = to_blob(key_id, base64.b64decode(result.ciphertext))
    return reply(
        {
            "CiphertextBlob": b64(blob),
            "KeyId": account().key_arn(key_id),
            "EncryptionAlgorithm": body["EncryptionAlgorithm"],
        },
        version=result.version,
        algorithm=result.algorithm,
    )


@blueprint.post("/Decrypt")
@operation("decrypt", KeyFrom.BODY, target=key_of_blob)
@documented_aws(
    "AWS KMS Decrypt: the key is the one the blob names",
    aws.decrypt_request,
    {400: "InvalidCiphertextException, IncorrectKeyException, NotFoundException, ..."},
)
def decrypt() -> Response:
    body = load(aws.decrypt_request)
    key_id, ciphertext = opened_blob(body["CiphertextBlob"], body.get("KeyId"))
    result = service().decrypt(
        key_id,
        ciphertext,
        body["EncryptionContext"],
        fit=encryption_fit(body["EncryptionAlgorithm"]),
    )
    return _key_reply(
        key_id,
        result,
        Plaintext=b64(result.plaintext),
        EncryptionAlgorithm=body["EncryptionAlgorithm"],
    )


@blueprint.post("/ReEncrypt")
@operation("rewrap", KeyFrom.BODY, target=key_of_blob)
@documented_aws(
    "AWS KMS ReEncrypt: rewrap on the source key, and encrypt on the destination",
    aws.re_encrypt_request,
    {400: "InvalidCiphertextException, IncorrectKeyException, NotFoundException, ..."},
)
def re_encrypt() -> Response:
    body = load(aws.re_encrypt_request)
    source, ciphertext = opened_blob(body["CiphertextBlob"], body.get("SourceKeyId"))
    destination = key_id_of(body["DestinationKeyId"])
    # The hooks checked "rewrap" on the source key; another destination also needs "encrypt".
    if destination != source and not keys_in_scope("encrypt")(destination):
        raise Forbidden()
    _opened, result = service().re_encrypt(
        source,
        ciphertext,
        body["SourceEncryptionContext"],
        destination,
        body["DestinationEncryptionContext"],
        source_fit=encryption_fit(body["SourceEncryptionAlgorithm"]),
        fit=encryption_fit(body["DestinationEncryptionAlgorithm"]),
    )
    blob = to_blob(destination, base64.b64decode(result.ciphertext))
    return reply(
        {
            "CiphertextBlob": b64(blob),
            "SourceKeyId": account().key_arn(source),
            "KeyId": account().key_arn(destination),
            "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        },
        version=result.version,
        algorithm=result.algorithm,
    )


def _data_key(include_plaintext: bool) -> Response:
    body = load(aws.data_key_request)
    key_id = key_id_of(body["KeyId"])
    if ("NumberOfBytes" in body) == ("KeySpec" in body):
        raise InvalidRequest("give exactly one of NumberOfBytes and KeySpec")
    size = body["NumberOfBytes"] if "NumberOfBytes" in body else DATA_KEY_BYTES[body["KeySpec"]]
    result = service().generate_data_key(
        key_id,
        size,
        body["EncryptionContext"],
        include_plaintext=include_plaintext,
        fit=DATA_KEY_FIT,
    )
    document = {
        "CiphertextBlob": b64(to_blob(key_id, base64.b64decode(result.ciphertext))),
        "KeyId": account().key_arn(key_id),
    }
    if result.plaintext is not None:
        document["Plaintext"] = b64(result.plaintext)
    return reply(document, version=result.version, algorithm=result.algorithm)


@blueprint.post("/GenerateDataKey")
@operation("datakey", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS GenerateDataKey (16, 24 or 32 bytes)", aws.data_key_request, NOT_FOUND)
def generate_data_key() -> Response:
    return _data_key(include_plaintext=True)


@blueprint.post("/GenerateDataKeyWithoutPlaintext")
@operation("datakey", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS GenerateDataKeyWithoutPlaintext", aws.data_key_request, NOT_FOUND)
def generate_data_key_without_plaintext() -> Response:
    return _data_key(include_plaintext=False)


@blueprint.post("/GenerateRandom")
@operation("random")
@documented_aws("AWS KMS GenerateRandom", aws.random_request, {400: "ValidationException"})
def generate_random() -> Response:
    drawn = service().random_bytes(load(aws.random_request)["NumberOfBytes"])
    return reply({"Plaintext": b64(drawn)})


def _signing(body: dict[str, Any]) -> dict[str, Any]:
    scheme, digest = SIGNING[body["SigningAlgorithm"]]
    prehashed = body["MessageType"] == "DIGEST"
    if prehashed and digest is None:
        raise PurposeMismatch(f"{body['SigningAlgorithm']} cannot sign a DIGEST")
    return {
        "signing_algorithm": scheme,
        "prehashed": prehashed,
        "digest_algorithm": digest if prehashed else None,
        "fit": signing_fit(body["SigningAlgorithm"]),
    }


@blueprint.post("/Sign")
@operation("sign", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS Sign", aws.sign_request, NOT_FOUND)
def sign() -> Response:
    body = load(aws.sign_request)
    key_id = key_id_of(body["KeyId"])
    result = service().sign(key_id, body["Message"], **_signing(body))
    return _key_reply(
        key_id,
        result,
        Signature=b64(result.signature),
        SigningAlgorithm=body["SigningAlgorithm"],
    )


@blueprint.post("/Verify")
@operation("verify", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws(
    "AWS KMS Verify: KMSInvalidSignatureException when the signature does not verify",
    aws.verify_request,
    NOT_FOUND,
)
def verify() -> Response:
    body = load(aws.verify_request)
    key_id = key_id_of(body["KeyId"])
    result = service().verify(key_id, body["Message"], body["Signature"], **_signing(body))
    if not result.valid:
        raise InvalidSignature()
    return _key_reply(
        key_id, result, SignatureValid=True, SigningAlgorithm=body["SigningAlgorithm"]
    )


@blueprint.post("/GenerateMac")
@operation("mac", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws("AWS KMS GenerateMac", aws.mac_request, NOT_FOUND)
def generate_mac() -> Response:
    body = load(aws.mac_request)
    key_id = key_id_of(body["KeyId"])
    result = service().mac(key_id, body["Message"], fit=mac_fit(body["MacAlgorithm"]))
    return _key_reply(key_id, result, Mac=b64(result.mac), MacAlgorithm=body["MacAlgorithm"])


@blueprint.post("/VerifyMac")
@operation("mac:verify", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws(
    "AWS KMS VerifyMac: KMSInvalidMacException when the MAC does not verify",
    aws.verify_mac_request,
    NOT_FOUND,
)
def verify_mac() -> Response:
    body = load(aws.verify_mac_request)
    key_id = key_id_of(body["KeyId"])
    result = service().verify_mac(
        key_id, body["Message"], body["Mac"], fit=mac_fit(body["MacAlgorithm"])
    )
    if not result.valid:
        raise InvalidMAC()
    return _key_reply(key_id, result, MacValid=True, MacAlgorithm=body["MacAlgorithm"])
