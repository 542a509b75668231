"""Crypto RPCs: /v1/kms/encrypt, /decrypt, /sign, /verify, /mac, /mac/verify, /random."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from kms.api import schemas
from kms.api.context import json_body, service
from kms.api.operations import KeyFrom, operation

blueprint = Blueprint("crypto", __name__, url_prefix="/v1/kms")


@blueprint.post("/encrypt")
@operation("encrypt", KeyFrom.BODY)
def encrypt() -> Response:
    body = schemas.encrypt_request.load(json_body())
    result = service().encrypt(body["key_id"], body["plaintext"])
    return jsonify(schemas.encrypt_response.dump(result))


@blueprint.post("/decrypt")
@operation("decrypt", KeyFrom.BODY)
def decrypt() -> Response:
    body = schemas.decrypt_request.load(json_body())
    result = service().decrypt(body["key_id"], body["ciphertext"], version=body["version"])
    return jsonify(schemas.decrypt_response.dump(result))


@blueprint.post("/sign")
@operation("sign", KeyFrom.BODY)
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
        return jsonify(valid=True)
    return jsonify(valid=False, error="signature invalid")


@blueprint.post("/mac")
@operation("mac", KeyFrom.BODY)
def mac() -> Response:
    body = schemas.mac_request.load(json_body())
    result = service().mac(body["key_id"], body["message"])
    return jsonify(schemas.mac_response.dump(result))


# A separate operation, so a policy can let a caller check MACs without letting it make them.
@blueprint.post("/mac/verify")
@operation("mac:verify", KeyFrom.BODY)
def mac_verify() -> Response:
    body = schemas.mac_verify_request.load(json_body())
    result = service().verify_mac(
        body["key_id"], body["message"], body["mac"], version=body["version"]
    )
    if result.valid:
        return jsonify(valid=True)
    return jsonify(valid=False, error="mac invalid")


@blueprint.post("/random")
@operation("random")
def random() -> Response:
    body = schemas.random_request.load(json_body())
    return jsonify(schemas.random_response.dump({"random": service().random_bytes(body["bytes"])}))
