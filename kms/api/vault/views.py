"""The Vault Transit routes, ``/v1/transit/...``: each maps onto the service call and the
operation name of its native twin, so one policy line covers both APIs.

The key's name is the URL's ``<key_id>`` (Vault's ``:name``), which authorization, audit,
metrics and rate limits read as they do for ``/v1/kms/keys/<key_id>``. The ``X-Vault-Token``
header is neither needed nor read: the caller is its client certificate, as everywhere.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

from flask import Blueprint, Response, request
from marshmallow import Schema
from werkzeug.exceptions import MethodNotAllowed

from kms.api.context import json_body, query_args, service
from kms.api.docs import documented
from kms.api.operations import KeyFrom, operation
from kms.api.policy import readable_key_patterns
from kms.api.vault import schemas
from kms.api.vault.answers import (
    answer,
    batch_answer,
    key_data,
    load_items,
    no_content,
)
from kms.api.vault.wire import (
    PUBLIC_KEY_NAMES,
    from_vault_tagged,
    key_type_for,
    mac_fit,
    parse_duration,
    rotation_period,
    signing_options,
    to_vault_ciphertext,
    to_vault_tagged,
)
from kms.crypto.hashing import hash_data
from kms.errors import InvalidRequest, KeyNotFound
from kms.service.keys import BatchItem, DataKey, Decrypted, Encrypted, KeyInfo, Signed

blueprint = Blueprint("vault", __name__, url_prefix="/v1/transit")
TAG = "vault-transit"
VAULT = schemas.vault_response
#: Vault lists every key at once; kms stops at this many (and says so in ``warnings``).
MAX_LISTED_KEYS = 10_000
_KEY_ERRORS = {404: "no such key (errors: [])"}
_USE_ERRORS = {400: "invalid input, no such key, or an option kms does not offer"}


# -- keys --------------------------------------------------------------------------------------


@blueprint.post("/keys/<key_id>")
@operation("keys:create", KeyFrom.PATH)
@documented(
    "Create a key of a Vault type (an existing key is left as it is)",
    body=schemas.create_key_request,
    response=VAULT,
    errors={400: "an unknown type, or an option kms does not offer"},
    tag=TAG,
)
def create_key(key_id: str) -> Response:
    body = schemas.create_key_request.load(json_body())
    key_type = key_type_for(body["type"], body["key_size"] or None)
    period = body["auto_rotate_period"]
    _key, created = service().ensure_key(
        key_id,
        key_type.purpose,
        key_type.algorithm,
        # Vault's keys are made undeletable until their config says otherwise.
        deletion_allowed=False,
        rotation_period=None if period is None else rotation_period(parse_duration(period)),
    )
    warnings = None if created else [f"key {key_id} already existed"]
    # Read back with its versions, as GET answers it.
    return _key_answer(service().get_key(key_id), warnings)


@blueprint.get("/keys/<key_id>")
@operation("keys:read", KeyFrom.PATH)
@documented("Read a key as Vault describes it", response=VAULT, errors=_KEY_ERRORS, tag=TAG)
def read_key(key_id: str) -> Response:
    return _key_answer(service().get_key(key_id))


@blueprint.route("/keys", methods=["GET", "LIST"])
@operation("keys:read")
@documented(
    "List the names of the keys the caller may read (LIST, or GET with ?list=true)",
    query=schemas.list_query,
    response=VAULT,
    errors={404: "no keys (errors: [])", 405: "GET without list=true"},
    tag=TAG,
)
def list_keys() -> Response:
    args = schemas.list_query.load(query_args())
    if request.method == "GET" and not args["list"]:
        raise MethodNotAllowed()
    names: list[str] = []
    after: str | None = None
    patterns = readable_key_patterns()
    warnings = None
    while True:
        page = service().list_page(limit=1000, after=after, key_patterns=patterns)
        names.extend(key.key_id for key in page.keys)
        after = page.next_after
        if after is None:
            break
        if len(names) >= MAX_LISTED_KEYS:
            warnings = [f"the list stops after {len(names)} keys (kms lists at most 10000)"]
            break
    if not names:
        raise KeyNotFound()  # Vault's empty 404
    return answer({"keys": names}, warnings=warnings)


@blueprint.delete("/keys/<key_id>")
@operation("keys:delete", KeyFrom.PATH)
@documented(
    "Delete a key now (needs deletion_allowed, set through its config)",
    status=204,
    errors={400: "no such key, or deletion_allowed is false"},
    tag=TAG,
)
def delete_key(key_id: str) -> Response:
    service().delete_key(key_id)
    return no_content()


@blueprint.post("/keys/<key_id>/config")
@operation("keys:update", KeyFrom.PATH)
@documented(
    "Change min_decryption_version, deletion_allowed or auto_rotate_period",
    body=schemas.configure_key_request,
    response=VAULT,
    errors={400: "no such key, a version out of range, or an option kms does not offer"},
    tag=TAG,
)
def configure_key(key_id: str) -> Response:
    body = schemas.configure_key_request.load(json_body())
    changes: dict[str, Any] = {}
    if body["min_decryption_version"] is not None:
        # Vault's 0 is its default: the first version.
        changes["min_decryption_version"] = max(body["min_decryption_version"], 1)
    if body["deletion_allowed"] is not None:
        changes["deletion_allowed"] = body["deletion_allowed"]
    if body["auto_rotate_period"] is not None:
        changes["rotation_period"] = rotation_period(parse_duration(body["auto_rotate_period"]))
    kms = service()
    if changes:
        kms.update_key(key_id, **changes)
    return _key_answer(kms.get_key(key_id))


@blueprint.post("/keys/<key_id>/rotate")
@operation("keys:rotate", KeyFrom.PATH)
@documented(
    "Rotate: add a version, which encrypts and signs from now on",
    response=VAULT,
    errors={400: "no such key, or it has kms.max_versions versions"},
    tag=TAG,
)
def rotate_key(key_id: str) -> Response:
    # hvac posts no body and no Content-Type here: nothing is read.
    kms = service()
    kms.rotate_key(key_id)
    return _key_answer(kms.get_key(key_id))


@blueprint.post("/keys/<key_id>/trim")
@operation("keys:trim", KeyFrom.PATH)
@documented(
    "Destroy the versions below min_available_version",
    body=schemas.trim_request,
    response=VAULT,
    errors={400: "no such key, or above min_decryption_version"},
    tag=TAG,
)
def trim_key(key_id: str) -> Response:
    body = schemas.trim_request.load(json_body())
    kms = service()
    kms.trim_key(key_id, **body)
    return _key_answer(kms.get_key(key_id))


@blueprint.get("/export/<kind>/<key_id>")
@operation("keys:read", KeyFrom.PATH)
@documented(
    "Not supported: kms never releases key material",
    response=VAULT,
    errors={400: "key is not exportable", **_KEY_ERRORS},
    tag=TAG,
)
def export_key(kind: str, key_id: str) -> Response:
    service().key_info(key_id)  # 404 for a key that is not there, as Vault
    raise InvalidRequest("key is not exportable")


@blueprint.get("/export/<kind>/<key_id>/<version>")
@operation("keys:read", KeyFrom.PATH)
@documented(
    "Not supported: kms never releases key material",
    response=VAULT,
    errors={400: "key is not exportable", **_KEY_ERRORS},
    tag=TAG,
)
def export_key_version(kind: str, key_id: str, version: str) -> Response:
    service().key_info(key_id)
    raise InvalidRequest("key is not exportable")


@blueprint.get("/backup/<key_id>")
@operation("keys:read", KeyFrom.PATH)
@documented(
    "Not supported: kms never releases key material",
    response=VAULT,
    errors={400: "plaintext backup is disallowed on the policy", **_KEY_ERRORS},
    tag=TAG,
)
def backup_key(key_id: str) -> Response:
    service().key_info(key_id)
    raise InvalidRequest("plaintext backup is disallowed on the policy")


@blueprint.post("/restore/<key_id>")
@operation("keys:create", KeyFrom.PATH)
@documented(
    "Not supported: kms takes no key material through the Vault routes",
    body=schemas.restore_request,
    response=VAULT,
    errors={400: "restore is not supported"},
    tag=TAG,
)
def restore_key(key_id: str) -> Response:
    raise InvalidRequest("restore is not supported by kms: it never takes in key material")


# -- encryption --------------------------------------------------------------------------------


def _encrypted(result: Encrypted) -> dict[str, Any]:
    return {"ciphertext": to_vault_ciphertext(result.ciphertext), "key_version": result.version}


def _decrypted(result: Decrypted) -> dict[str, Any]:
    return {"plaintext": base64.b64encode(result.plaintext).decode("ascii")}


def _one_or_batch(
    body: dict[str, Any],
    item_schema: Schema,
    *,
    one: Callable[[], Any],
    batch: Callable[[list[BatchItem]], Sequence[Any]],
    dump: Callable[[Any], dict[str, Any]],
) -> Response:
    """Vault's two forms of a call: with ``batch_input``, each item loaded with ``item_schema``
    and answered in its place (kms.api.vault.answers); otherwise the body's one input."""
    if body["batch_input"] is not None:
        items = load_items(body["batch_input"], item_schema)
        return batch_answer(items, batch([item.call for item in items]), dump)
    result = one()
    return answer(dump(result), version=result.version, algorithm=result.algorithm)


@blueprint.post("/encrypt/<key_id>")
@operation("encrypt", KeyFrom.PATH)
@documented(
    "Encrypt with the key's latest version (or each item of batch_input)",
    body=schemas.encrypt_request,
    response=VAULT,
    errors=_USE_ERRORS,
    tag=TAG,
)
def encrypt(key_id: str) -> Response:
    body = schemas.encrypt_request.load(json_body())
    kms = service()
    return _one_or_batch(
        body,
        schemas.encrypt_item,
        one=lambda: kms.encrypt(key_id, body["plaintext"], body["context"]),
        batch=lambda calls: kms.encrypt_batch(key_id, calls),
        dump=_encrypted,
    )


@blueprint.post("/decrypt/<key_id>")
@operation("decrypt", KeyFrom.PATH)
@documented(
    "Decrypt with the version the ciphertext names (or each item of batch_input)",
    body=schemas.decrypt_request,
    response=VAULT,
    errors=_USE_ERRORS,
    tag=TAG,
)
def decrypt(key_id: str) -> Response:
    body = schemas.decrypt_request.load(json_body())
    kms = service()
    return _one_or_batch(
        body,
        schemas.decrypt_item,
        one=lambda: kms.decrypt(key_id, body["ciphertext"], body["context"]),
        batch=lambda calls: kms.decrypt_batch(key_id, calls),
        dump=_decrypted,
    )


@blueprint.post("/rewrap/<key_id>")
@operation("rewrap", KeyFrom.PATH)
@documented(
    "Decrypt and encrypt again under the latest version, inside the server",
    body=schemas.rewrap_request,
    response=VAULT,
    errors=_USE_ERRORS,
    tag=TAG,
)
def rewrap(key_id: str) -> Response:
    body = schemas.rewrap_request.load(json_body())
    kms = service()
    return _one_or_batch(
        body,
        schemas.rewrap_item,
        one=lambda: kms.rewrap(key_id, body["ciphertext"], body["context"]),
        batch=lambda calls: kms.rewrap_batch(key_id, calls),
        dump=_encrypted,
    )


@blueprint.post("/datakey/<kind>/<key_id>")
@operation("datakey", KeyFrom.PATH)
@documented(
    "A fresh data key encrypted under the latest version; kind plaintext also returns it",
    body=schemas.data_key_request,
    response=VAULT,
    errors=_USE_ERRORS,
    tag=TAG,
)
def datakey(kind: str, key_id: str) -> Response:
    if kind not in ("plaintext", "wrapped"):
        raise InvalidRequest("Invalid path, must be 'plaintext' or 'wrapped'")
    body = schemas.data_key_request.load(json_body())
    result: DataKey = service().generate_data_key(
        key_id,
        key_bytes=body["bits"] // 8,
        context=body["context"],
        include_plaintext=kind == "plaintext",
    )
    data: dict[str, Any] = {
        "ciphertext": to_vault_ciphertext(result.ciphertext),
        "key_version": result.version,
    }
    if result.plaintext is not None:
        data["plaintext"] = base64.b64encode(result.plaintext).decode("ascii")
    return answer(data, version=result.version, algorithm=result.algorithm)


# -- HMAC, signatures --------------------------------------------------------------------------


@blueprint.post("/hmac/<key_id>", defaults={"algorithm": None}, endpoint="hmac")
@blueprint.post("/hmac/<key_id>/<algorithm>", endpoint="hmac_with_algorithm")
@operation("mac", KeyFrom.PATH)
@documented(
    "HMAC with the latest version of an hmac key (vault:v<N>:...)",
    body=schemas.hmac_request,
    response=VAULT,
    errors=_USE_ERRORS,
    tag=TAG,
)
def hmac(key_id: str, algorithm: str | None) -> Response:
    body = schemas.hmac_request.load(json_body())
    result = service().mac(key_id, body["input"], fit=mac_fit(algorithm or body["algorithm"]))
    return answer(
        {"hmac": to_vault_tagged(result.version, result.mac), "key_version": result.version},
        version=result.version,
        algorithm=result.algorithm,
    )


@blueprint.post("/sign/<key_id>", defaults={"hash_algorithm": None}, endpoint="sign")
@blueprint.post("/sign/<key_id>/<hash_algorithm>", endpoint="sign_with_hash")
@operation("sign", KeyFrom.PATH)
@documented(
    "Sign with the key's latest version (or each item of batch_input)",
    body=schemas.sign_request,
    response=VAULT,
    errors=_USE_ERRORS,
    tag=TAG,
)
def sign(key_id: str, hash_algorithm: str | None) -> Response:
    body = schemas.sign_request.load(json_body())
    kms = service()
    options = signing_options(
        kms.key_info(key_id).algorithm,
        hash_algorithm or body["hash_algorithm"],
        body["signature_algorithm"],
        body["prehashed"],
    )
    options["prehashed"] = body["prehashed"]
    return _one_or_batch(
        body,
        schemas.sign_item,
        one=lambda: kms.sign(key_id, body["input"], **options),  # type: ignore[arg-type]
        batch=lambda calls: kms.sign_batch(key_id, [_with(call, options) for call in calls]),
        dump=_signed,
    )


def _with(call: BatchItem, options: dict[str, Any]) -> BatchItem:
    """A sign item's call with the request's signing options (a failed item as it is)."""
    return call if isinstance(call, Exception) else {"message": call["input"]} | options


def _signed(result: Signed) -> dict[str, Any]:
    return {
        "signature": to_vault_tagged(result.version, result.signature),
        "key_version": result.version,
    }


@blueprint.post("/verify/<key_id>", defaults={"hash_algorithm": None}, endpoint="verify")
@blueprint.post("/verify/<key_id>/<hash_algorithm>", endpoint="verify_with_hash")
@operation("verify", KeyFrom.PATH, when_field=("hmac", "mac:verify"))
@documented(
    "Verify a signature, or with hmac a MAC (operation mac:verify), by the version it names",
    body=schemas.verify_request,
    response=VAULT,
    errors=_USE_ERRORS,
    tag=TAG,
)
def verify(key_id: str, hash_algorithm: str | None) -> Response:
    body = schemas.verify_request.load(json_body())
    if body["name"] is not None and body["name"] != key_id:
        raise InvalidRequest("name: the key's name in the body differs from the one in the URL")
    kms = service()
    if body["hmac"] is not None:
        version, mac = from_vault_tagged(body["hmac"], "HMAC")
        fit = mac_fit(hash_algorithm or body["algorithm"])
        checked = kms.verify_mac(key_id, body["input"], mac, version=version, fit=fit)
    else:
        version, signature = from_vault_tagged(body["signature"], "signature")
        options = signing_options(
            kms.key_info(key_id).algorithm,
            hash_algorithm or body["hash_algorithm"],
            body["signature_algorithm"],
            body["prehashed"],
        )
        checked = kms.verify(
            key_id,
            body["input"],
            signature,
            options["signing_algorithm"],
            prehashed=body["prehashed"],
            digest_algorithm=options["digest_algorithm"],
            version=version,
        )
    return answer({"valid": checked.valid}, algorithm=checked.algorithm)


# -- no key ------------------------------------------------------------------------------------


@blueprint.post("/random", defaults={"count": None}, endpoint="random")
@blueprint.post("/random/<count>", endpoint="random_count")
@operation("random")
@documented(
    "Random bytes from the server's CSPRNG, base64 or hex",
    body=schemas.random_request,
    response=VAULT,
    tag=TAG,
)
def random(count: str | None) -> Response:
    body = schemas.random_request.load(json_body() | ({} if count is None else {"bytes": count}))
    drawn = service().random_bytes(body["bytes"])
    text = drawn.hex() if body["format"] == "hex" else base64.b64encode(drawn).decode("ascii")
    return answer({"random_bytes": text})


@blueprint.post("/hash", defaults={"algorithm": None}, endpoint="hash")
@blueprint.post("/hash/<algorithm>", endpoint="hash_with_algorithm")
@operation("hash")
@documented(
    "A SHA-2 or SHA-3 hash of the input, hex or base64",
    body=schemas.hash_request,
    response=VAULT,
    tag=TAG,
)
def hash_(algorithm: str | None) -> Response:
    body = schemas.hash_request.load(json_body())
    digest = hash_data(algorithm or body["algorithm"], body["input"])
    text = digest.hex() if body["format"] == "hex" else base64.b64encode(digest).decode("ascii")
    return answer({"sum": text})


# -- answers -----------------------------------------------------------------------------------


def _key_answer(key: KeyInfo, warnings: list[str] | None = None) -> Response:
    """The key as Vault reads it, with the public key of each version it may hand out."""
    public_keys: dict[int, str] = {}
    if key.algorithm in PUBLIC_KEY_NAMES and key.state == "enabled":
        kms = service()
        for version in key.key_versions:
            if version.version >= key.min_decryption_version:
                public_keys[version.version] = kms.public_key(
                    key.key_id, version.version
                ).public_key
    return answer(key_data(key, public_keys), version=key.version, warnings=warnings)
