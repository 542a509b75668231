"""AWS's own clients pointed at a real kms: boto3 with the client certificate, and a botocore
session for the AWS Encryption SDK, kept apart from the developer's AWS configuration."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import botocore
import botocore.session
from botocore.config import Config

from tests.helpers.harness import Deployment

REGION = "us-east-1"
ACCOUNT = "000000000000"
ARN_PREFIX = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/"


@contextmanager
def aws_environment(deployment: Deployment) -> Iterator[None]:
    """No AWS configuration of the developer's, the endpoint of ``deployment``
    (``AWS_ENDPOINT_URL_KMS``, which the Encryption SDK's clients honour) and its CA."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(
        {
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_ENDPOINT_URL_KMS": deployment.base_url,
            "AWS_CA_BUNDLE": str(deployment.ca_cert),
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "dummy-secret-never-checked",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    try:
        yield
    finally:
        for name in [name for name in os.environ if name.startswith("AWS_")]:
            del os.environ[name]
        os.environ.update(saved)


def kms_client(
    deployment: Deployment,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    signed: bool = True,
    **config: Any,
) -> Any:
    """A boto3 KMS client of ``deployment`` with a client certificate (the dev one unless
    given); ``signed=False`` sends no SigV4 signature at all."""
    session = boto3.session.Session(
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="dummy-secret-never-checked",
        region_name=REGION,
    )
    certificate = (str(cert or deployment.client_cert), str(key or deployment.client_key))
    options: dict[str, Any] = {"client_cert": certificate, **config}
    if not signed:
        options["signature_version"] = botocore.UNSIGNED
    return session.client(
        "kms",
        endpoint_url=deployment.base_url,
        verify=str(deployment.ca_cert),
        config=Config(**options),
    )


def botocore_session(deployment: Deployment) -> botocore.session.Session:
    """A botocore session whose clients carry the dev client certificate (for the Encryption
    SDK, which makes its own clients); use inside ``aws_environment``."""
    session = botocore.session.Session()
    session.set_default_client_config(
        Config(client_cert=(str(deployment.client_cert), str(deployment.client_key)))
    )
    return session


def call_every_operation(post: Callable[[str, dict[str, Any]], Any]) -> None:
    """Call each operation the AWS KMS endpoint serves once, successfully, through ``post``
    (operation name, request body -> response body): for the OpenAPI test, which validates
    every route's real answer."""
    arn = post("CreateKey", {"Description": "every operation"})["KeyMetadata"]["Arn"]
    key = {"KeyId": arn}
    post("DescribeKey", key)
    post("ListKeys", {"Limit": 1})
    post("CreateAlias", {"AliasName": "alias/every-operation", "TargetKeyId": arn})
    post("UpdateAlias", {"AliasName": "alias/every-operation", "TargetKeyId": arn})
    post("ListAliases", {"Limit": 1})
    post("DeleteAlias", {"AliasName": "alias/every-operation"})
    post("UpdateKeyDescription", {**key, "Description": "renamed"})
    post("TagResource", {**key, "Tags": [{"TagKey": "env", "TagValue": "test"}]})
    post("ListResourceTags", key)
    post("UntagResource", {**key, "TagKeys": ["env"]})
    post("EnableKeyRotation", {**key, "RotationPeriodInDays": 90})
    post("GetKeyRotationStatus", key)
    post("DisableKeyRotation", key)
    post("RotateKeyOnDemand", key)
    post("ListKeyRotations", key)
    plaintext = base64.b64encode(b"x").decode()
    blob = post("Encrypt", {**key, "Plaintext": plaintext})["CiphertextBlob"]
    post("Decrypt", {"CiphertextBlob": blob})
    post("ReEncrypt", {"CiphertextBlob": blob, "DestinationKeyId": arn})
    post("GenerateDataKey", {**key, "KeySpec": "AES_256"})
    post("GenerateDataKeyWithoutPlaintext", {**key, "NumberOfBytes": 16})
    post("GenerateRandom", {"NumberOfBytes": 8})
    post("DisableKey", key)
    post("EnableKey", key)
    post("ScheduleKeyDeletion", {**key, "PendingWindowInDays": 7})
    post("CancelKeyDeletion", key)
    signer = {
        "KeyId": post("CreateKey", {"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"})[
            "KeyMetadata"
        ]["Arn"]
    }
    post("GetPublicKey", signer)
    signing = {**signer, "Message": plaintext, "SigningAlgorithm": "ECDSA_SHA_256"}
    signature = post("Sign", signing)["Signature"]
    post("Verify", {**signing, "Signature": signature})
    macer = {
        "KeyId": post("CreateKey", {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"})[
            "KeyMetadata"
        ]["Arn"]
    }
    maccing = {**macer, "Message": plaintext, "MacAlgorithm": "HMAC_SHA_256"}
    mac = post("GenerateMac", maccing)["Mac"]
    post("VerifyMac", {**maccing, "Mac": mac})
