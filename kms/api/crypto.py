"""Crypto RPCs: /v1/kms/encrypt, /decrypt, /sign, /verify."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from kms.api import schemas
from kms.api.context import json_body, service
from kms.api.docs import documented
from kms.api.operations import KeyFrom, operation

blueprint = Blueprint("crypto", __name__, url_prefix="/v1/kms")


@blueprint.post("/encrypt")
@operation("encrypt", KeyFrom.BODY)
@documented(
    "Encrypt with the key's latest version",
    body=schemas.encrypt_request,
    response=schemas.encrypt_response,
    errors={400: "a signing key", 404: "record not found"},
)
def encrypt() -> Response:
    body = schemas.encrypt_request.load(json_body())
    result = service().encrypt(body["key_id"], body["plaintext"])
    return jsonify(schemas.encrypt_response.dump(result))


@blueprint.post("/decrypt")
@operation("decrypt", KeyFrom.BODY)
@documented(
    "Decrypt with the version the ciphertext names",
    body=schemas.decrypt_request,
    response=schemas.decrypt_response,
    errors={400: "invalid ciphertext, or a signing key", 404: "record not found"},
)
def decrypt() -> Response:
    body = schemas.decrypt_request.load(json_body())
    result = service().decrypt(body["key_id"], body["ciphertext"])
    return jsonify(schemas.decrypt_response.dump(result))


@blueprint.post("/sign")
@operation("sign", KeyFrom.BODY)
@documented(
    "Sign a message with the key's latest version",
    body=schemas.sign_request,
    response=schemas.sign_response,
    errors={400: "an encryption key", 404: "record not found"},
)
def sign() -> Response:
    body = schemas.sign_request.load(json_body())
    result = service().sign(body["key_id"], body["message"])
    return jsonify(schemas.sign_response.dump(result))


@blueprint.post("/verify")
@operation("verify", KeyFrom.BODY)
@documented(
    "Verify a signature made by one of the key's newest versions",
    body=schemas.verify_request,
    response=schemas.verify_response,
    errors={400: "an encryption key", 404: "record not found"},
)
def verify() -> Response:
    body = schemas.verify_request.load(json_body())
    result = service().verify(body["key_id"], body["message"], body["signature"])
    if result.valid:
        return jsonify(schemas.verify_response.dump({"valid": True}))
    return jsonify(schemas.verify_response.dump({"valid": False, "error": "signature invalid"}))
