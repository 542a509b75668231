"""What the AWS KMS routes take and answer (docs/aws-kms.md), through the app's test client:
the rotation period as AWS counts it, and the key a Decrypt's blob names for the policy. The
same operations through boto3 over real gunicorn are tests/http/test_aws_kms.py."""

from __future__ import annotations

import base64
from pathlib import Path

from prometheus_client import REGISTRY

from kms.app import create_app
from kms.service.keyring import RootKeyring
from kms.settings import Settings
from tests.helpers.aws_wire import aws
from tests.helpers.tls import client_as


def test_a_rotation_period_kept_in_hours_reads_as_whole_days(
    initialised: Settings, keyring: RootKeyring
) -> None:
    """docs/aws-kms.md, GetKeyRotationStatus: a native `rotation_period` in hours is shown in
    AWS's whole days, rounded down and at least 1."""
    client = client_as(create_app(initialised, keyring=keyring))
    for key_id, period, days in [("two-days", "49h", 2), ("half-a-day", "12h", 1)]:
        created = client.post("/v1/kms/keys", json={"key_id": key_id, "rotation_period": period})
        assert created.status_code == 201, created.get_json()
        status, found = aws(client, "GetKeyRotationStatus", KeyId=key_id)
        assert status == 200, found
        assert (found["KeyRotationEnabled"], found["RotationPeriodInDays"]) == (True, days)


POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
  billing:
    - operations: ["decrypt"]
      keys: ["billing-*"]
"""


def test_a_blob_that_is_not_strict_base64_names_no_key_to_the_policy(
    initialised: Settings, keyring: RootKeyring, tmp_path: Path
) -> None:
    """docs/aws-kms.md: Decrypt's key, for the policy, is the one the blob names; a blob that
    does not decode names none, and only a rule for every key lets such a request through. The
    policy does not read a key out of what the view would refuse to read."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    app = create_app(initialised.with_overrides(policy_file=policy), keyring=keyring)
    admin, billing = client_as(app), client_as(app, "billing")
    assert admin.post("/v1/kms/keys", json={"key_id": "billing-1"}).status_code == 201
    plaintext = base64.b64encode(b"invoice").decode("ascii")
    status, encrypted = aws(admin, "Encrypt", KeyId="billing-1", Plaintext=plaintext)
    assert status == 200, encrypted
    blob = encrypted["CiphertextBlob"]
    status, opened = aws(billing, "Decrypt", CiphertextBlob=blob)
    assert (status, opened["Plaintext"]) == (200, plaintext)
    # The same blob with a character base64 does not have: lenient decoding would skip it.
    damaged = blob[:8] + "!" + blob[8:]
    status, refused = aws(billing, "Decrypt", CiphertextBlob=damaged)
    assert (status, refused["__type"]) == (400, "AccessDeniedException")
    status, refused = aws(admin, "Decrypt", CiphertextBlob=damaged)
    assert (status, refused["__type"]) == (400, "ValidationException")


def test_describe_key_says_whether_the_key_is_enabled(
    initialised: Settings, keyring: RootKeyring
) -> None:
    client = client_as(create_app(initialised, keyring=keyring))
    status, created = aws(client, "CreateKey")
    assert status == 200, created
    key_id = created["KeyMetadata"]["KeyId"]
    assert created["KeyMetadata"]["Enabled"] is True
    assert aws(client, "DisableKey", KeyId=key_id)[0] == 200
    status, described = aws(client, "DescribeKey", KeyId=key_id)
    assert (status, described["KeyMetadata"]["Enabled"]) == (200, False)
    assert described["KeyMetadata"]["KeyState"] == "Disabled"


def test_an_aws_encryption_is_counted_under_its_key_s_algorithm(
    initialised: Settings, keyring: RootKeyring
) -> None:
    """docs/operations.md: kms_crypto_operations_total{operation, algorithm}, whichever API the
    request came through."""
    client = client_as(create_app(initialised, keyring=keyring))
    status, created = aws(client, "CreateKey")
    assert status == 200, created
    labels = {"operation": "encrypt", "algorithm": "AES-256-GCM"}
    before = REGISTRY.get_sample_value("kms_crypto_operations_total", labels) or 0.0
    plaintext = base64.b64encode(b"x").decode("ascii")
    status, encrypted = aws(
        client, "Encrypt", KeyId=created["KeyMetadata"]["KeyId"], Plaintext=plaintext
    )
    assert status == 200, encrypted
    assert REGISTRY.get_sample_value("kms_crypto_operations_total", labels) == before + 1


def test_aws_encrypt_refuses_an_algorithm_that_does_not_fit_the_key(
    initialised: Settings, keyring: RootKeyring
) -> None:
    """docs/aws-kms.md, InvalidKeyUsageException: an RSA key asked for SYMMETRIC_DEFAULT (the
    default) answers no ciphertext."""
    client = client_as(create_app(initialised, keyring=keyring))
    _, created = aws(client, "CreateKey", KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    plaintext = base64.b64encode(b"x").decode("ascii")
    status, refused = aws(
        client, "Encrypt", KeyId=created["KeyMetadata"]["KeyId"], Plaintext=plaintext
    )
    assert (status, refused["__type"]) == (400, "InvalidKeyUsageException")
    assert "CiphertextBlob" not in refused


def test_list_keys_pages_with_a_marker(initialised: Settings, keyring: RootKeyring) -> None:
    """docs/aws-kms.md, ListKeys: `Limit` and `Marker` paging; the last page is not
    `Truncated` and has no `NextMarker`."""
    client = client_as(create_app(initialised, keyring=keyring))
    for key_id in ("a", "b", "c"):
        assert client.post("/v1/kms/keys", json={"key_id": key_id}).status_code == 201
    status, first = aws(client, "ListKeys", Limit=2)
    assert status == 200, first
    assert [key["KeyId"] for key in first["Keys"]] == ["a", "b"]
    assert first["Truncated"] is True
    status, last = aws(client, "ListKeys", Limit=2, Marker=first["NextMarker"])
    assert status == 200, last
    assert [key["KeyId"] for key in last["Keys"]] == ["c"]
    assert last["Truncated"] is False and "NextMarker" not in last
