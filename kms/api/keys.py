"""Key lifecycle: /v1/kms/keys..."""

from __future__ import annotations

from flask import Blueprint, Response

from kms.api import schemas
from kms.api.context import answer, json_body, note_rows_examined, query_args, service
from kms.api.docs import documented
from kms.api.operations import KeyFrom, operation
from kms.api.policy import readable_key_patterns

blueprint = Blueprint("keys", __name__, url_prefix="/v1/kms/keys")
#: On a page of keys that is not the last: the ``after`` of the next page.
NEXT_AFTER_HEADER = "KMS-Next-After"


@blueprint.post("")
@operation("keys:create", KeyFrom.BODY)
@documented(
    "Create a key (version 1)",
    status=201,
    body=schemas.create_key_request,
    response=schemas.key_response,
    errors={409: "key already exists"},
)
def create_key() -> Response:
    body = schemas.create_key_request.load(json_body())
    key = service().create_key(**body)
    return answer(schemas.key_response.dump(key), 201)


@blueprint.get("")
@operation("keys:read")
@documented(
    "List the keys the caller may read, ordered by key_id; the next page starts after the "
    "KMS-Next-After header",
    query=schemas.list_keys_query,
    response=schemas.key_list_response,
    errors={503: "the listing ran past kms.list_deadline_ms"},
)
def list_keys() -> Response:
    args = schemas.list_keys_query.load(query_args())
    page = service().list_page(**args, key_patterns=readable_key_patterns())
    note_rows_examined(page.rows_examined)
    response = answer(schemas.key_list_response.dump(page.keys))
    if page.next_after is not None:
        response.headers[NEXT_AFTER_HEADER] = page.next_after
    return response


@blueprint.get("/<key_id>")
@operation("keys:read", KeyFrom.PATH)
@documented(
    "Get a key with its newest 100 versions",
    response=schemas.key_detail_response,
    errors={404: "record not found"},
)
def get_key(key_id: str) -> Response:
    return answer(schemas.key_detail_response.dump(service().get_key(key_id)))


@blueprint.get("/<key_id>/versions")
@operation("keys:read", KeyFrom.PATH)
@documented(
    "List a key's versions, oldest first",
    query=schemas.list_versions_query,
    response=schemas.key_version_list_response,
    errors={404: "record not found"},
)
def list_key_versions(key_id: str) -> Response:
    args = schemas.list_versions_query.load(query_args())
    versions = service().list_versions(key_id, limit=args["limit"], after=args["after"])
    return answer(schemas.key_version_list_response.dump(versions))


@blueprint.get("/<key_id>/public-key")
@operation("keys:read", KeyFrom.PATH)
@documented(
    "Export a signing key's public key (PEM)",
    query=schemas.public_key_query,
    response=schemas.public_key_response,
    errors={400: "an AES, ChaCha20 or HMAC key", 404: "record not found"},
)
def get_public_key(key_id: str) -> Response:
    args = schemas.public_key_query.load(query_args())
    public_key = service().public_key(key_id, version=args["version"])
    return answer(schemas.public_key_response.dump(public_key))


@blueprint.patch("/<key_id>")
@operation("keys:update", KeyFrom.PATH)
@documented(
    "Change a key's description, labels, min_decryption_version or deletion_allowed",
    body=schemas.update_key_request,
    response=schemas.key_response,
    errors={
        400: "min_decryption_version out of range",
        404: "record not found",
        409: "the key is pending deletion",
    },
)
def update_key(key_id: str) -> Response:
    body = schemas.update_key_request.load(json_body())
    return answer(schemas.key_response.dump(service().update_key(key_id, **body)))


@blueprint.post("/<key_id>/disable")
@operation("keys:disable", KeyFrom.PATH)
@documented(
    "Disable a key: every use is refused (409) until it is enabled again",
    response=schemas.key_response,
    errors={404: "record not found", 409: "the key is pending deletion"},
)
def disable_key(key_id: str) -> Response:
    return answer(schemas.key_response.dump(service().disable_key(key_id)))


@blueprint.post("/<key_id>/enable")
@operation("keys:enable", KeyFrom.PATH)
@documented(
    "Enable a disabled key",
    response=schemas.key_response,
    errors={404: "record not found", 409: "the key is pending deletion"},
)
def enable_key(key_id: str) -> Response:
    return answer(schemas.key_response.dump(service().enable_key(key_id)))


@blueprint.post("/<key_id>/trim")
@operation("keys:trim", KeyFrom.PATH)
@documented(
    "Destroy the versions below min_available_version",
    body=schemas.trim_request,
    response=schemas.key_response,
    errors={
        404: "record not found",
        409: "above min_decryption_version, or the key is pending deletion",
    },
)
def trim_key(key_id: str) -> Response:
    body = schemas.trim_request.load(json_body())
    return answer(schemas.key_response.dump(service().trim_key(key_id, **body)))


@blueprint.post("/<key_id>/cancel-deletion")
@operation("keys:cancel-deletion", KeyFrom.PATH)
@documented(
    "Cancel a scheduled deletion; the key is then disabled",
    response=schemas.key_response,
    errors={404: "record not found", 409: "key is not pending deletion"},
)
def cancel_deletion(key_id: str) -> Response:
    return answer(schemas.key_response.dump(service().cancel_deletion(key_id)))


@blueprint.delete("/<key_id>")
@operation("keys:delete", KeyFrom.PATH)
@documented(
    "Delete a key and all its versions, now or (?pending_days=N) after a window",
    status=204,
    query=schemas.delete_key_query,
    also={200: ("the deletion is scheduled: the key, pending_deletion", schemas.key_response)},
    errors={
        404: "record not found",
        409: "deletion_allowed is false, already pending, or a window shorter than "
        "kms.deletion.min_pending_days",
    },
)
def delete_key(key_id: str) -> Response:
    args = schemas.delete_key_query.load(query_args())
    scheduled = service().delete_key(key_id, pending_days=args["pending_days"])
    if scheduled is not None:
        return answer(schemas.key_response.dump(scheduled))
    response = Response(status=204)
    del response.headers["Content-Type"]  # 204 has no body, so no media type either
    return response


@blueprint.post("/<key_id>/rotate")
@operation("keys:rotate", KeyFrom.PATH)
@documented(
    "Rotate: add a version, which encrypts and signs from now on",
    response=schemas.key_response,
    errors={
        404: "record not found",
        409: "the key changed during the operation, it has kms.max_versions versions, or it is "
        "pending deletion",
    },
)
def rotate_key(key_id: str) -> Response:
    return answer(schemas.key_response.dump(service().rotate_key(key_id)))


@blueprint.post("/<key_id>/recreate")
@operation("keys:recreate", KeyFrom.PATH)
@documented(
    "Recreate: wipe every version and issue version 1 with fresh material",
    status=201,
    response=schemas.key_response,
    errors={
        404: "record not found",
        409: "the key changed during the operation, deletion_allowed is false, it is pending "
        "deletion, or kms.deletion.min_pending_days is above 0",
    },
)
def recreate_key(key_id: str) -> Response:
    return answer(schemas.key_response.dump(service().recreate_key(key_id)), 201)
