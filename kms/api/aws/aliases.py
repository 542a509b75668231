"""AWS KMS's alias operations and ListKeyRotations (the rules: kms.service.keys.aliases).

The policy judges an alias change by the key it touches, under operations of its own:
CreateAlias is ``aliases:create`` on the key the alias is made to name; UpdateAlias is
``aliases:update`` on the key it is moved to and on the key it named; DeleteAlias is
``aliases:delete`` on the key it names. The audit line names the alias (``alias``) and that key.
"""

from __future__ import annotations

from typing import Any

from flask import Request, Response

from kms.api.aws import schemas as aws
from kms.api.aws.keys import ALIAS_PREFIX, epoch
from kms.api.aws.requests import (
    NOT_FOUND,
    account,
    aws_body,
    blueprint,
    documented_aws,
    key_id_of,
    key_named_in,
    load,
    page_reply,
    reply,
)
from kms.api.context import note_rows_examined, service
from kms.api.operations import KeyFrom, Target, operation
from kms.api.policy import keys_in_scope, readable_key_patterns
from kms.errors import Forbidden, KMSError
from kms.service.keys.results import AliasInfo

ALIAS_ERRORS = {
    400: "NotFoundException, AlreadyExistsException, InvalidAliasNameException, "
    "KMSInvalidStateException, ValidationException, ..."
}


def _alias_name() -> str | None:
    value = aws_body().get("AliasName")
    return value if isinstance(value, str) else None


def alias_and_target(request: Request) -> Target:
    """The hooks' ``Target`` of CreateAlias and UpdateAlias: the key the alias is to name."""
    try:
        return Target(key_named_in("TargetKeyId")(request).key_id, alias_name=_alias_name())
    except KMSError:
        return Target(key_id=None)


def alias_and_its_key(_request: Request) -> Target:
    """The hooks' ``Target`` of DeleteAlias: the key the alias names now."""
    try:
        name = _alias_name()
        if name is None:
            return Target(key_id=None)
        try:
            return Target(key_id_of(name), alias_name=name)
        except KMSError:
            return Target(key_id=None, alias_name=name)
    except KMSError:
        return Target(key_id=None)


def alias_entry(alias: AliasInfo) -> dict[str, Any]:
    return {
        "AliasName": alias.alias_name,
        "AliasArn": account().alias_arn(alias.alias_name),
        "TargetKeyId": alias.key_id,
        "CreationDate": epoch(alias.created_at),
        "LastUpdatedDate": epoch(alias.updated_at),
    }


@blueprint.post("/CreateAlias")
@operation("aliases:create", KeyFrom.BODY, target=alias_and_target)
@documented_aws("AWS KMS CreateAlias", aws.alias_target_request, ALIAS_ERRORS)
def create_alias() -> Response:
    body = load(aws.alias_target_request)
    service().create_alias(body["AliasName"], key_id_of(body["TargetKeyId"]))
    return reply({})


@blueprint.post("/UpdateAlias")
@operation("aliases:update", KeyFrom.BODY, target=alias_and_target)
@documented_aws(
    "AWS KMS UpdateAlias: to a key of the same key usage and type", aws.alias_target_request,
    ALIAS_ERRORS,
)  # fmt: skip
def update_alias() -> Response:
    body = load(aws.alias_target_request)
    target = key_id_of(body["TargetKeyId"])
    name = body["AliasName"]
    # The hooks checked the key it moves to; the key it leaves needs the same grant.
    named = service().resolve_alias(name) if name.startswith(ALIAS_PREFIX) else None
    if named is not None and not keys_in_scope("aliases:update")(named):
        raise Forbidden()
    service().update_alias(name, target, expected_key_id=named)
    return reply({})


@blueprint.post("/DeleteAlias")
@operation("aliases:delete", KeyFrom.BODY, target=alias_and_its_key)
@documented_aws("AWS KMS DeleteAlias", aws.alias_request, ALIAS_ERRORS)
def delete_alias() -> Response:
    name = load(aws.alias_request)["AliasName"]
    service().delete_alias(name, expected_key_id=key_id_of(name))
    return reply({})


@blueprint.post("/ListAliases")
@operation("keys:read")
@documented_aws(
    "AWS KMS ListAliases: the aliases made with CreateAlias, then the alias of each key's own "
    "key_id; of the keys the caller may read",
    aws.list_aliases_request,
    NOT_FOUND,
)
def list_aliases() -> Response:
    body = load(aws.list_aliases_request)
    key_id = None
    if "KeyId" in body:
        # One key's aliases: read through the policy as DescribeKey would.
        key_id = key_id_of(body["KeyId"])
        if not keys_in_scope("keys:read")(key_id):
            raise Forbidden()
    page = service().list_aliases(
        limit=body["Limit"],
        after=body["Marker"],
        key_patterns=readable_key_patterns(),
        key_id=key_id,
    )
    note_rows_examined(page.rows_examined)
    return page_reply("Aliases", [alias_entry(alias) for alias in page.aliases], page.next_after)


@blueprint.post("/ListKeyRotations")
@operation("keys:read", KeyFrom.BODY, target=key_named_in("KeyId"))
@documented_aws(
    "AWS KMS ListKeyRotations: each version after the first (RotationType is not recorded)",
    aws.list_rotations_request,
    NOT_FOUND,
)
def list_key_rotations() -> Response:
    body = load(aws.list_rotations_request)
    key_id = key_id_of(body["KeyId"])
    after = None if body["Marker"] is None else int(body["Marker"])
    versions, more = service().list_rotations(key_id, limit=body["Limit"], after=after)
    rotations = [
        {"KeyId": account().key_arn(key_id), "RotationDate": epoch(version.created_at)}
        for version in versions
    ]
    return page_reply("Rotations", rotations, str(versions[-1].version) if more else None)
