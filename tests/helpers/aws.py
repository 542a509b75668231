"""AWS's own clients pointed at a real kms: boto3 with the client certificate, and a botocore
session for the AWS Encryption SDK, kept apart from the developer's AWS configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
