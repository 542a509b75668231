"""An AWS KMS compatible endpoint: AWS's JSON 1.1 protocol on kms's listener (docs/aws-kms.md).

AWS's clients send every operation as ``POST /`` with ``X-Amz-Target: TrentService.<Operation>``
and ``Content-Type: application/x-amz-json-1.1``. ``TargetRouter``, in front of the Flask app,
turns such a request into ``POST /v1/aws-kms/<Operation>``: one route per operation, each with
its ``@operation`` (the native operation name it maps onto) and ``@documented``, so that mutual
TLS, the policy, audit, metrics and rate limits treat it exactly as the native call. The same
paths may be called directly.

A target the router does not route is answered by the router itself, before any hook: an AWS KMS
operation kms does not implement with ``UnsupportedOperationException`` naming it, anything else
with ``UnknownOperationException``. Neither touches a key, so neither is audited or counted.

Identity is the client certificate. A SigV4 ``Authorization`` header (and ``X-Amz-Date``,
``X-Amz-Security-Token``) is accepted and never read or logged: unsigned requests work alike.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from kms.api.errors import aws_error_response

PREFIX = "/v1/aws-kms"
TARGET_PREFIX = "TrentService."
#: The app config entry holding the ``Account`` of the ARNs (kms.api.aws.keys).
ACCOUNT = "KMS_AWS_ACCOUNT"
REQUEST_ID_HEADER = "x-amzn-RequestId"
_OPERATION_NAME = re.compile(r"[A-Za-z]{1,64}")

#: Every operation of AWS KMS's API (botocore's model ``kms/2014-11-01``).
AWS_OPERATIONS = frozenset(
    [
        "CancelKeyDeletion",
        "ConnectCustomKeyStore",
        "CreateAlias",
        "CreateCustomKeyStore",
        "CreateGrant",
        "CreateKey",
        "Decrypt",
        "DeleteAlias",
        "DeleteCustomKeyStore",
        "DeleteImportedKeyMaterial",
        "DeriveSharedSecret",
        "DescribeCustomKeyStores",
        "DescribeKey",
        "DisableKey",
        "DisableKeyRotation",
        "DisconnectCustomKeyStore",
        "EnableKey",
        "EnableKeyRotation",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateMac",
        "GenerateRandom",
        "GetKeyLastUsage",
        "GetKeyPolicy",
        "GetKeyRotationStatus",
        "GetParametersForImport",
        "GetPublicKey",
        "ImportKeyMaterial",
        "ListAliases",
        "ListGrants",
        "ListKeyPolicies",
        "ListKeyRotations",
        "ListKeys",
        "ListResourceTags",
        "ListRetirableGrants",
        "PutKeyPolicy",
        "ReEncrypt",
        "ReplicateKey",
        "RetireGrant",
        "RevokeGrant",
        "RotateKeyOnDemand",
        "ScheduleKeyDeletion",
        "Sign",
        "TagResource",
        "UntagResource",
        "UpdateAlias",
        "UpdateCustomKeyStore",
        "UpdateKeyDescription",
        "UpdatePrimaryRegion",
        "Verify",
        "VerifyMac",
    ]
)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class TargetRouter:
    """WSGI middleware: ``POST /`` with ``X-Amz-Target: TrentService.<Operation>`` goes to
    ``/v1/aws-kms/<Operation>`` when kms serves that operation; any other target is answered
    here (see the module docstring). Requests without the header pass untouched."""

    def __init__(self, app: WSGIApp, served: frozenset[str]) -> None:
        self.app = app
        self.served = served

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target is None or environ.get("PATH_INFO") != "/" or environ["REQUEST_METHOD"] != "POST":
            return self.app(environ, start_response)
        name = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
        if name in self.served:
            environ["PATH_INFO"] = f"{PREFIX}/{name}"
            return self.app(environ, start_response)
        if name in AWS_OPERATIONS:
            response = aws_error_response(
                "UnsupportedOperationException", f"kms does not implement {name}"
            )
        else:
            shown = name if _OPERATION_NAME.fullmatch(name) else "this target"
            response = aws_error_response("UnknownOperationException", f"unknown: {shown}")
        response.headers[REQUEST_ID_HEADER] = uuid.uuid4().hex
        return response(environ, start_response)


def route_by_target(app: Flask) -> None:
    """Put the ``TargetRouter`` in front of ``app``; call once its blueprints are registered."""
    served = frozenset(
        rule.rule[len(PREFIX) + 1 :]
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(PREFIX + "/")
    )
    app.wsgi_app = TargetRouter(app.wsgi_app, served)  # type: ignore[method-assign]
