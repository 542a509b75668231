"""Key lifecycle: /v1/kms/keys..."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from kms.api import schemas
from kms.api.context import json_body, query_args, service
from kms.api.operations import KeyFrom, operation
from kms.api.policy import readable_keys

blueprint = Blueprint("keys", __name__, url_prefix="/v1/kms/keys")


@blueprint.post("")
@operation("keys:create", KeyFrom.BODY)
def create_key() -> tuple[Response, int]:
    body = schemas.create_key_request.load(json_body())
    key = service().create_key(**body)
    return jsonify(schemas.key_response.dump(key)), 201


@blueprint.get("")
@operation("keys:read")
def list_keys() -> Response:
    args = schemas.list_keys_query.load(query_args())
    keys = readable_keys(service().list_keys, args["limit"], args["after"])
    return jsonify(schemas.key_list_response.dump(keys))


@blueprint.get("/<key_id>")
@operation("keys:read", KeyFrom.PATH)
def get_key(key_id: str) -> Response:
    return jsonify(schemas.key_detail_response.dump(service().get_key(key_id)))


@blueprint.get("/<key_id>/versions")
@operation("keys:read", KeyFrom.PATH)
def list_key_versions(key_id: str) -> Response:
    args = schemas.list_versions_query.load(query_args())
    versions = service().list_versions(key_id, limit=args["limit"], after=args["after"])
    return jsonify(schemas.key_version_list_response.dump(versions))


@blueprint.get("/<key_id>/public-key")
@operation("keys:read", KeyFrom.PATH)
def get_public_key(key_id: str) -> Response:
    args = schemas.public_key_query.load(query_args())
    public_key = service().public_key(key_id, version=args["version"])
    return jsonify(schemas.public_key_response.dump(public_key))


@blueprint.patch("/<key_id>")
@operation("keys:update", KeyFrom.PATH)
def update_key(key_id: str) -> Response:
    body = schemas.update_key_request.load(json_body())
    return jsonify(schemas.key_response.dump(service().update_key(key_id, **body)))


@blueprint.delete("/<key_id>")
@operation("keys:delete", KeyFrom.PATH)
def delete_key(key_id: str) -> Response:
    service().delete_key(key_id)
    response = Response(status=204)
    del response.headers["Content-Type"]  # 204 has no body, so no media type either
    return response


@blueprint.post("/<key_id>/rotate")
@operation("keys:rotate", KeyFrom.PATH)
def rotate_key(key_id: str) -> Response:
    return jsonify(schemas.key_response.dump(service().rotate_key(key_id)))


@blueprint.post("/<key_id>/recreate")
@operation("keys:recreate", KeyFrom.PATH)
def recreate_key(key_id: str) -> tuple[Response, int]:
    return jsonify(schemas.key_response.dump(service().recreate_key(key_id))), 201
