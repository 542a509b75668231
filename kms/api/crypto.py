"""Crypto RPCs: /v1/kms/encrypt, /decrypt, /sign, /verify, /mac, /mac/verify, /random."""

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
    errors={400: "invalid ciphertext, or a signing or MAC key", 404: "record not found"},
)
def decrypt() -> Response:
    body = schemas.decrypt_request.load(json_body())
    result = service().decrypt(body["key_id"], body["ciphertext"], version=body["version"])
    return jsonify(schemas.decrypt_response.dump(result))


@blueprint.post("/sign")
@operation("sign", KeyFrom.BODY)
@documented(
    "Sign a message with the key's latest version",
    body=schemas.sign_request,
    response=schemas.sign_response,
    errors={
        400: "an encryption or MAC key, or a scheme or digest that does not fit the key",
        404: "record not found",
    },
)
def sign() -> Response:
    body = schemas.sign_request.load(json_body())
    result = service().sign(
        body["key_id"],
        body["message"],
        body["signing_algorithm"],
        prehashed=body["prehashed"],
        digest_algorithm=body["digest_algorithm"],
    )
    return jsonify(schemas.sign_response.dump(result))


@blueprint.post("/verify")
@operation("verify", KeyFrom.BODY)
@documented(
    "Verify a signature made by one of the key's newest versions",
    body=schemas.verify_request,
    response=schemas.verify_response,
    errors={
        400: "an encryption or MAC key, or a scheme or digest that does not fit the key",
        404: "record not found",
    },
)
def verify() -> Response:
    body = schemas.verify_request.load(json_body())
    result = service().verify(
        body["key_id"],
        body["message"],
        body["signature"],
        body["signing_algorithm"],
        prehashed=body["prehashed"],
        digest_algorithm=body["digest_algorithm"],
        version=body["version"],
    )
    if result.valid:
        return jsonify(schemas.verify_response.dump({"valid": True}))
    return jsonify(schemas.verify_response.dump({"valid": False, "error": "signature invalid"}))


@blueprint.post("/mac")
@operation("mac", KeyFrom.BODY)
@documented(
    "Compute a MAC with the key's latest version",
    body=schemas.mac_request,
    response=schemas.mac_response,
    errors={400: "not a MAC key", 404: "record not found"},
)
def mac() -> Response:
    body = schemas.mac_request.load(json_body())
    result = service().mac(body["key_id"], body["message"])
    return jsonify(schemas.mac_response.dump(result))


# A separate operation, so a policy can let a caller check MACs without letting it make them.
@blueprint.post("/mac/verify")
@operation("mac:verify", KeyFrom.BODY)
@documented(
    "Verify a MAC made by one of the key's newest versions (or the one named)",
    body=schemas.mac_verify_request,
    response=schemas.mac_verify_response,
    errors={400: "not a MAC key", 404: "record not found"},
)
def mac_verify() -> Response:
    body = schemas.mac_verify_request.load(json_body())
    result = service().verify_mac(
        body["key_id"], body["message"], body["mac"], version=body["version"]
    )
    if result.valid:
        return jsonify(schemas.mac_verify_response.dump({"valid": True}))
    return jsonify(schemas.mac_verify_response.dump({"valid": False, "error": "mac invalid"}))


@blueprint.post("/random")
@operation("random")
@documented(
    "Random bytes from the server's CSPRNG",
    body=schemas.random_request,
    response=schemas.random_response,
)
def random() -> Response:
    body = schemas.random_request.load(json_body())
    return jsonify(schemas.random_response.dump({"random": service().random_bytes(body["bytes"])}))
