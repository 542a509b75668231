"""AWS KMS's aliases and ListKeyRotations over the shared real gunicorn with mutual TLS
(tests/http/conftest.py), driven by boto3: aliases made, moved, listed, deleted and used in every
operation that takes a KeyId, AWS's rules as the exception classes boto3 models, the policy and
the audit of alias changes, and what a key's deletion does to its aliases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.helpers.aws import ARN_PREFIX, kms_client
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    create_key,
    database_unchanged,
    expect_no_content,
    unique_key_id,
)
from tests.helpers.identities import audit_records, issue_client_certificate

pytestmark = pytest.mark.slow

ALIAS_ARN_PREFIX = ARN_PREFIX.replace(":key/", ":alias/")


@pytest.fixture(scope="module")
def kms(aws_server: ServerProcess) -> Any:
    return kms_client(aws_server.deployment)


@pytest.fixture(scope="module")
def native(aws_server: ServerProcess) -> Iterator[KMSClient]:
    client = KMSClient(aws_server.deployment)
    yield client
    client.close()


def new_alias(label: str = "app") -> str:
    return f"alias/{label}/{uuid.uuid4().hex[:12]}"


def key_id_of(arn: str) -> str:
    return arn.removeprefix(ARN_PREFIX)


def code_of(error: pytest.ExceptionInfo[ClientError]) -> str:
    return error.value.response["Error"]["Code"]


def test_an_alias_is_made_used_moved_listed_and_deleted(kms: Any) -> None:
    first = kms.create_key(Description="alias first")["KeyMetadata"]["Arn"]
    second = kms.create_key(Description="alias second")["KeyMetadata"]["Arn"]
    alias = new_alias()
    assert (
        kms.create_alias(AliasName=alias, TargetKeyId=first)["ResponseMetadata"]["HTTPStatusCode"]
        == 200
    )
    for name in (alias, ALIAS_ARN_PREFIX + alias.removeprefix("alias/")):
        assert kms.describe_key(KeyId=name)["KeyMetadata"]["Arn"] == first
    blob = kms.encrypt(KeyId=alias, Plaintext=b"under the alias")["CiphertextBlob"]
    opened = kms.decrypt(CiphertextBlob=blob, KeyId=alias)
    assert (opened["Plaintext"], opened["KeyId"]) == (b"under the alias", first)

    kms.update_alias(AliasName=alias, TargetKeyId=key_id_of(second))
    assert kms.encrypt(KeyId=alias, Plaintext=b"moved")["KeyId"] == second
    # The blob names its key: it still decrypts, but not when the request names the moved alias.
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"under the alias"
    with pytest.raises(kms.exceptions.IncorrectKeyException):
        kms.decrypt(CiphertextBlob=blob, KeyId=alias)

    listed = kms.list_aliases(KeyId=second)["Aliases"]
    entry = next(a for a in listed if a["AliasName"] == alias)
    assert entry["TargetKeyId"] == key_id_of(second)
    assert entry["AliasArn"] == ALIAS_ARN_PREFIX + alias.removeprefix("alias/")
    assert entry["LastUpdatedDate"] >= entry["CreationDate"]
    assert listed[-1]["AliasName"] == f"alias/{key_id_of(second)}"  # the key's own
    assert all(a["AliasName"] != alias for a in kms.list_aliases(KeyId=first)["Aliases"])

    kms.delete_alias(AliasName=alias)
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId=alias)
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.delete_alias(AliasName=alias)


def test_every_operation_that_takes_a_key_id_takes_an_alias(kms: Any) -> None:
    symmetric = kms.create_key()["KeyMetadata"]["Arn"]
    signer = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    macer = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    aliases = {}
    for arn, label in ((symmetric, "sym"), (signer, "sig"), (macer, "mac")):
        aliases[label] = new_alias(label)
        kms.create_alias(AliasName=aliases[label], TargetKeyId=arn)
    a = aliases["sym"]
    assert kms.describe_key(KeyId=a)["KeyMetadata"]["Arn"] == symmetric
    kms.disable_key(KeyId=a)
    assert kms.describe_key(KeyId=symmetric)["KeyMetadata"]["KeyState"] == "Disabled"
    kms.enable_key(KeyId=a)
    kms.update_key_description(KeyId=a, Description="by alias")
    kms.tag_resource(KeyId=a, Tags=[{"TagKey": "by", "TagValue": "alias"}])
    assert kms.list_resource_tags(KeyId=a)["Tags"] == [{"TagKey": "by", "TagValue": "alias"}]
    kms.untag_resource(KeyId=a, TagKeys=["by"])
    kms.enable_key_rotation(KeyId=a, RotationPeriodInDays=90)
    assert kms.get_key_rotation_status(KeyId=a)["KeyRotationEnabled"] is True
    kms.disable_key_rotation(KeyId=a)
    assert kms.rotate_key_on_demand(KeyId=a)["KeyId"] == symmetric
    assert kms.list_key_rotations(KeyId=a)["Rotations"][0]["KeyId"] == symmetric
    blob = kms.encrypt(KeyId=a, Plaintext=b"p")["CiphertextBlob"]
    assert kms.re_encrypt(CiphertextBlob=blob, SourceKeyId=a, DestinationKeyId=a)["KeyId"] == (
        symmetric
    )
    assert kms.generate_data_key(KeyId=a, KeySpec="AES_256")["KeyId"] == symmetric
    assert kms.generate_data_key_without_plaintext(KeyId=a, NumberOfBytes=16)["KeyId"] == (
        symmetric
    )
    s = aliases["sig"]
    assert kms.get_public_key(KeyId=s)["KeyId"] == signer
    signing = {"KeyId": s, "Message": b"m", "SigningAlgorithm": "ECDSA_SHA_256"}
    signature = kms.sign(**signing)["Signature"]
    assert kms.verify(**signing, Signature=signature)["SignatureValid"] is True
    m = aliases["mac"]
    mac = kms.generate_mac(KeyId=m, Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert kms.verify_mac(KeyId=m, Message=b"m", Mac=mac, MacAlgorithm="HMAC_SHA_256")["MacValid"]
    # ScheduleKeyDeletion and CancelKeyDeletion last: the key keeps its alias while pending.
    kms.schedule_key_deletion(KeyId=a, PendingWindowInDays=7)
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.encrypt(KeyId=a, Plaintext=b"p")
    assert kms.cancel_key_deletion(KeyId=a)["KeyId"] == symmetric


def test_alias_errors_come_back_as_the_classes_boto3_models(
    aws_deployment: Deployment, kms: Any, native: KMSClient
) -> None:
    key = kms.create_key()["KeyMetadata"]["Arn"]
    hmac_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"][
        "Arn"
    ]
    native_key = create_key(native, key_id=unique_key_id("team-native"))["key_id"]
    alias = new_alias()
    kms.create_alias(AliasName=alias, TargetKeyId=key)
    with database_unchanged(aws_deployment.database):
        with pytest.raises(kms.exceptions.AlreadyExistsException):
            kms.create_alias(AliasName=alias, TargetKeyId=hmac_key)
        for bad in ("payments", "alias/has space", "alias/dot.ted", "alias/aws/s3"):
            with pytest.raises(kms.exceptions.InvalidAliasNameException):
                kms.create_alias(AliasName=bad, TargetKeyId=key)
        with pytest.raises(kms.exceptions.NotFoundException):
            kms.create_alias(AliasName=new_alias(), TargetKeyId="no-such-key")
        with pytest.raises(kms.exceptions.NotFoundException):
            kms.update_alias(AliasName=new_alias(), TargetKeyId=key)
        with pytest.raises(ClientError) as mismatched:
            kms.update_alias(AliasName=alias, TargetKeyId=hmac_key)
        assert code_of(mismatched) == "ValidationException"
        assert "same key usage and type" in mismatched.value.response["Error"]["Message"]
        # The alias of a key_id is every key's own: no alias can take it.
        with pytest.raises(kms.exceptions.AlreadyExistsException):
            kms.create_alias(AliasName=f"alias/{native_key}", TargetKeyId=key)
        # boto3 checks the model's 256-character limit itself; the server's own answer shows
        # without that.
        unchecked = kms_client(aws_deployment, parameter_validation=False)
        with pytest.raises(ClientError) as too_long:
            unchecked.create_alias(AliasName="alias/" + "x" * 251, TargetKeyId=key)
        assert code_of(too_long) == "ValidationException"
    assert kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"] == key
    kms.create_alias(AliasName="alias/" + "x" * 238 + uuid.uuid4().hex[:12], TargetKeyId=key)
    kms.schedule_key_deletion(KeyId=hmac_key, PendingWindowInDays=7)
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.create_alias(AliasName=new_alias(), TargetKeyId=hmac_key)


def test_list_aliases_pages_with_limit_and_marker(kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]["Arn"]
    made = sorted(new_alias("paged") for _ in range(3))
    for alias in made:
        kms.create_alias(AliasName=alias, TargetKeyId=key)
    one_key = []
    marker: dict[str, str] = {}
    while True:
        page = kms.list_aliases(KeyId=key, Limit=1, **marker)
        assert len(page["Aliases"]) <= 1
        one_key += [a["AliasName"] for a in page["Aliases"]]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = {"Marker": page["NextMarker"]}
    assert one_key == [*made, f"alias/{key_id_of(key)}"]
    everything = [
        a["AliasName"]
        for page in kms.get_paginator("list_aliases").paginate(PaginationConfig={"PageSize": 2})
        for a in page["Aliases"]
    ]
    assert len(everything) == len(set(everything))
    assert set(made) | {f"alias/{key_id_of(key)}"} <= set(everything)
    with pytest.raises(ClientError) as bad_marker:
        kms.list_aliases(Marker="not-a-marker")
    assert code_of(bad_marker) == "ValidationException"


def test_list_key_rotations_names_each_rotation_and_pages(kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]["Arn"]
    none = kms.list_key_rotations(KeyId=key)
    assert (none["Rotations"], none["Truncated"]) == ([], False)
    created = kms.describe_key(KeyId=key)["KeyMetadata"]["CreationDate"]
    kms.rotate_key_on_demand(KeyId=key)
    kms.rotate_key_on_demand(KeyId=key)
    first = kms.list_key_rotations(KeyId=key, Limit=1)
    assert first["Truncated"] is True and len(first["Rotations"]) == 1
    second = kms.list_key_rotations(KeyId=key, Limit=1, Marker=first["NextMarker"])
    assert second["Truncated"] is False and "NextMarker" not in second
    rotations = first["Rotations"] + second["Rotations"]
    assert [r["KeyId"] for r in rotations] == [key, key]
    assert created <= rotations[0]["RotationDate"] <= rotations[1]["RotationDate"]
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.list_key_rotations(KeyId="no-such-key")
    with pytest.raises(ClientError) as bad_marker:
        kms.list_key_rotations(KeyId=key, Marker="x")
    assert code_of(bad_marker) == "ValidationException"


def test_a_destroyed_key_takes_its_aliases_with_it(kms: Any, native: KMSClient) -> None:
    key_id = create_key(native, key_id=unique_key_id("team-doomed"))["key_id"]
    alias = new_alias("doomed")
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    kms.schedule_key_deletion(KeyId=alias, PendingWindowInDays=7)
    # Kept while pending, as in AWS KMS.
    assert alias in [a["AliasName"] for a in kms.list_aliases(KeyId=key_id)["Aliases"]]
    kms.cancel_key_deletion(KeyId=alias)
    expect_no_content(native.delete(f"/v1/kms/keys/{key_id}"))
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId=alias)
    everything = [
        a["AliasName"]
        for page in kms.get_paginator("list_aliases").paginate()
        for a in page["Aliases"]
    ]
    assert alias not in everything


def test_alias_changes_need_the_policy_on_each_key_they_touch_and_are_audited(
    aws_deployment: Deployment, kms: Any, native: KMSClient
) -> None:
    cert, private = issue_client_certificate(aws_deployment, "aws-aliases", "aws-aliases")
    team = kms_client(aws_deployment, cert, private)
    ours = create_key(native, key_id=unique_key_id("team-a"))["key_id"]
    also_ours = create_key(native, key_id=unique_key_id("team-b"))["key_id"]
    theirs = create_key(native, key_id=unique_key_id("other"))["key_id"]
    alias = new_alias("team")
    team.create_alias(AliasName=alias, TargetKeyId=ours)
    assert team.encrypt(KeyId=alias, Plaintext=b"p")["KeyId"] == ARN_PREFIX + ours
    for refused in (
        lambda: team.create_alias(AliasName=new_alias("team"), TargetKeyId=theirs),
        lambda: team.update_alias(AliasName=alias, TargetKeyId=theirs),
    ):
        with pytest.raises(ClientError) as denied:
            refused()
        assert code_of(denied) == "AccessDeniedException"
    team.update_alias(AliasName=alias, TargetKeyId=also_ours)
    # An alias the owner points at a key outside the team's: the team may neither move it
    # away from that key nor delete it.
    foreign = new_alias("foreign")
    kms.create_alias(AliasName=foreign, TargetKeyId=theirs)
    for refused in (
        lambda: team.update_alias(AliasName=foreign, TargetKeyId=ours),
        lambda: team.delete_alias(AliasName=foreign),
        lambda: team.encrypt(KeyId=foreign, Plaintext=b"p"),
    ):
        with pytest.raises(ClientError) as denied:
            refused()
        assert code_of(denied) == "AccessDeniedException"
    assert kms.describe_key(KeyId=foreign)["KeyMetadata"]["KeyId"] == theirs
    team.delete_alias(AliasName=alias)

    answers = [
        (r["operation"], r["key_id"], r["status"])
        for r in audit_records(aws_deployment)
        if r["type"] == "response" and r.get("alias") == alias
    ]
    assert answers == [
        ("aliases:create", ours, 200),
        ("aliases:update", also_ours, 200),
        ("aliases:delete", also_ours, 200),
    ]
