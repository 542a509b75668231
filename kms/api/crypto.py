"""Crypto RPCs: /v1/kms/encrypt, /decrypt, /datakey, /rewrap, /sign, /verify, /mac,
/mac/verify, /random.

encrypt, decrypt, datakey, rewrap, sign and verify also take a batch, ``{key_id, batch: [...]}``
(``kms.api.batch``), under the same operation: authorization, audit and rate limits treat a batch
as one request on its key.
"""

from __future__ import annotations

from flask import Blueprint, Response

from kms.api import schemas
from kms.api.batch import SingleOrBatch
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

ENCRYPT = SingleOrBatch(
    request=schemas.encrypt_request,
    dump=schemas.fast_encrypt_response,
    load_item=schemas.fast_encrypt_item,
    dump_item=schemas.fast_encrypt_response,
)
DECRYPT = SingleOrBatch(
    request=schemas.decrypt_request,
    dump=schemas.fast_decrypt_response,
    load_item=schemas.fast_decrypt_item,
    dump_item=schemas.fast_decrypt_response,
)
DATA_KEY = SingleOrBatch(
    request=schemas.data_key_request,
    dump=schemas.dump_data_key,
    load_item=schemas.fast_data_key_item,
    dump_item=schemas.dump_data_key,
)
REWRAP = SingleOrBatch(
    request=schemas.rewrap_request,
    dump=schemas.fast_encrypt_response,
    load_item=schemas.fast_rewrap_item,
    dump_item=schemas.fast_encrypt_response,
)
SIGN = SingleOrBatch(
    request=schemas.sign_request,
    dump=schemas.fast_sign_response,
    load_item=schemas.fast_sign_item,
    dump_item=schemas.fast_sign_response,
)
VERIFY = SingleOrBatch(
    request=schemas.verify_request,
    dump=schemas.dump_verified,
    load_item=schemas.fast_verify_item,
    dump_item=schemas.dump_verified,
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
    kms = service()
    return ENCRYPT.answer(kms.encrypt, kms.encrypt_batch)


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
    kms = service()
    return DECRYPT.answer(kms.decrypt, kms.decrypt_batch)


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
    kms = service()
    return DATA_KEY.answer(kms.generate_data_key, kms.generate_data_key_batch)


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
    kms = service()
    return REWRAP.answer(kms.rewrap, kms.rewrap_batch)


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
    kms = service()
    return SIGN.answer(kms.sign, kms.sign_batch)


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
    kms = service()
    return VERIFY.answer(kms.verify, kms.verify_batch)


@blueprint.post("/mac")
@operation("mac", KeyFrom.BODY)
@documented(
    "Compute a MAC with the key's latest version",
    body=schemas.mac_request,
    response=schemas.mac_response,
    errors={400: "not a MAC key", 404: "record not found"},
)
def mac() -> Response:
    result = service().mac(**schemas.mac_request.load(json_body()))
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
    result = service().verify_mac(**schemas.mac_verify_request.load(json_body()))
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
    drawn = service().random_bytes(**schemas.random_request.load(json_body()))
    return answer(schemas.random_response.dump({"random": drawn}))
