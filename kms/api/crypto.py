"""Crypto RPCs: /v1/kms/encrypt, /decrypt, /datakey, /rewrap, /sign, /verify, /mac,
/mac/verify, /random.

encrypt, decrypt, datakey, rewrap, sign and verify also take a batch, ``{key_id, batch: [...]}``
(``kms.api.batch``), under the same operation: authorization, audit and rate limits treat a batch
as one request on its key.
"""

from __future__ import annotations

from flask import Blueprint, Response

from kms.api import schemas
from kms.api.batch import is_batch, run_batch
from kms.api.context import answer, crypto_answer, json_body, service
from kms.api.docs import documented
from kms.api.operations import KeyFrom, operation

blueprint = Blueprint("crypto", __name__, url_prefix="/v1/kms")
#: The batch form of encrypt, decrypt, datakey, rewrap, sign and verify, described in words: the
#: request and response schemas above document the single call.
BATCH_FORM = (
    "Also takes a batch: `{key_id, batch: [item, ...]}`, each item the fields of the single call "
    "but `key_id` (at most `server.max_batch_items`), answered `{results: [...]}` in order, each "
    "its result or `{error}`."
)


@blueprint.post("/encrypt")
@operation("encrypt", KeyFrom.BODY)
@documented(
    "Encrypt with the key's latest version",
    body=schemas.encrypt_request,
    description=BATCH_FORM,
    response=schemas.encrypt_response,
    errors={400: "a signing key", 404: "record not found"},
)
def encrypt() -> Response:
    if is_batch(json_body()):
        return run_batch(
            json_body(),
            schemas.fast_encrypt_item,
            service().encrypt_batch,
            schemas.fast_encrypt_response,
        )
    body = schemas.encrypt_request.load(json_body())
    result = service().encrypt(**body)
    return crypto_answer(result, schemas.encrypt_response.dump(result))


@blueprint.post("/decrypt")
@operation("decrypt", KeyFrom.BODY)
@documented(
    "Decrypt with the version the ciphertext names",
    body=schemas.decrypt_request,
    description=BATCH_FORM,
    response=schemas.decrypt_response,
    errors={400: "invalid ciphertext, or a signing or MAC key", 404: "record not found"},
)
def decrypt() -> Response:
    if is_batch(json_body()):
        return run_batch(
            json_body(),
            schemas.fast_decrypt_item,
            service().decrypt_batch,
            schemas.fast_decrypt_response,
        )
    body = schemas.decrypt_request.load(json_body())
    result = service().decrypt(**body)
    return crypto_answer(result, schemas.decrypt_response.dump(result))


@blueprint.post("/datakey")
@operation("datakey", KeyFrom.BODY)
@documented(
    "A fresh data key, wrapped under the key's latest version (and in plaintext if asked)",
    body=schemas.data_key_request,
    response=schemas.data_key_response,
    errors={400: "a signing or MAC key", 404: "record not found"},
    description=BATCH_FORM,
)
def datakey() -> Response:
    if is_batch(json_body()):
        return run_batch(
            json_body(),
            schemas.fast_data_key_item,
            service().generate_data_key_batch,
            schemas.dump_data_key,
        )
    body = schemas.data_key_request.load(json_body())
    result = service().generate_data_key(**body)
    return crypto_answer(result, schemas.dump_data_key(result))


@blueprint.post("/rewrap")
@operation("rewrap", KeyFrom.BODY)
@documented(
    "Decrypt and encrypt again under the key's latest version, inside the server",
    body=schemas.rewrap_request,
    response=schemas.encrypt_response,
    errors={400: "invalid ciphertext, or a signing or MAC key", 404: "record not found"},
    description=BATCH_FORM,
)
def rewrap() -> Response:
    if is_batch(json_body()):
        return run_batch(
            json_body(),
            schemas.fast_rewrap_item,
            service().rewrap_batch,
            schemas.fast_encrypt_response,
        )
    body = schemas.rewrap_request.load(json_body())
    result = service().rewrap(**body)
    return crypto_answer(result, schemas.encrypt_response.dump(result))


@blueprint.post("/sign")
@operation("sign", KeyFrom.BODY)
@documented(
    "Sign a message with the key's latest version",
    body=schemas.sign_request,
    description=BATCH_FORM,
    response=schemas.sign_response,
    errors={
        400: "an encryption or MAC key, or a scheme or digest that does not fit the key",
        404: "record not found",
    },
)
def sign() -> Response:
    if is_batch(json_body()):
        return run_batch(
            json_body(), schemas.fast_sign_item, service().sign_batch, schemas.fast_sign_response
        )
    body = schemas.sign_request.load(json_body())
    result = service().sign(
        body["key_id"],
        body["message"],
        body["signing_algorithm"],
        prehashed=body["prehashed"],
        digest_algorithm=body["digest_algorithm"],
    )
    return crypto_answer(result, schemas.sign_response.dump(result))


@blueprint.post("/verify")
@operation("verify", KeyFrom.BODY)
@documented(
    "Verify a signature made by one of the key's newest versions",
    body=schemas.verify_request,
    description=BATCH_FORM,
    response=schemas.verify_response,
    errors={
        400: "an encryption or MAC key, or a scheme or digest that does not fit the key",
        404: "record not found",
    },
)
def verify() -> Response:
    if is_batch(json_body()):
        return run_batch(
            json_body(), schemas.fast_verify_item, service().verify_batch, schemas.dump_verified
        )
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
    return crypto_answer(result, schemas.dump_verified(result))


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
    return crypto_answer(result, schemas.mac_response.dump(result))


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
        return crypto_answer(result, schemas.mac_verify_response.dump({"valid": True}))
    return crypto_answer(
        result, schemas.mac_verify_response.dump({"valid": False, "error": "mac invalid"})
    )


@blueprint.post("/random")
@operation("random")
@documented(
    "Random bytes from the server's CSPRNG",
    body=schemas.random_request,
    response=schemas.random_response,
)
def random() -> Response:
    body = schemas.random_request.load(json_body())
    return answer(schemas.random_response.dump({"random": service().random_bytes(body["bytes"])}))
