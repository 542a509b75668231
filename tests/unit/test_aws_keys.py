"""The AWS KMS endpoint's pure parts: identifiers and ARNs, the ciphertext blob, the key specs
and the AWS error codes (kms.api.aws.keys, kms.api.errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kms import errors
from kms.api.aws.keys import (
    BLOB_MAGIC,
    KEY_SPECS,
    SIGNING,
    SIGNING_ALGORITHMS_OF,
    SPEC_OF_ALGORITHM,
    Account,
    from_blob,
    native_algorithm,
    to_blob,
)
from kms.api.errors import aws_code_for
from kms.crypto.algorithms import (
    ENCRYPTION_ALGORITHMS,
    MAC_ALGORITHMS,
    RSA_ENCRYPTION_ALGORITHMS,
    RSA_SIGNATURE_SCHEMES,
    SIGNING_ALGORITHMS,
)
from kms.errors import ConfigurationError
from kms.settings import load_settings

ACCOUNT = Account("eu-central-1", "123456789012")


@pytest.mark.parametrize(
    ("identifier", "named"),
    [
        ("device123", "device123"),
        ("arn:aws:kms:eu-central-1:123456789012:key/device123", "device123"),
        # An alias is looked up by the service (kms.service.keys.aliases).
        ("alias/device123", "alias/device123"),
        ("arn:aws:kms:eu-central-1:123456789012:alias/device123", "alias/device123"),
        ("arn:aws:kms:eu-central-1:123456789012:alias/team/app_1", "alias/team/app_1"),
    ],
)
def test_every_form_of_key_id_names_a_key_or_an_alias(identifier: str, named: str) -> None:
    assert ACCOUNT.name_of(identifier) == named


@pytest.mark.parametrize(
    "identifier",
    [
        "arn:aws:kms:eu-west-1:123456789012:key/device123",  # another region
        "arn:aws:kms:eu-central-1:999999999999:key/device123",  # another account
        "arn:aws-cn:kms:eu-central-1:123456789012:key/device123",  # another partition
        "arn:aws:kms:eu-central-1:123456789012:grant/device123",
        "../device123",
        "x" * 129,
    ],
)
def test_an_identifier_no_key_of_ours_can_have_is_not_found(identifier: str) -> None:
    with pytest.raises(errors.KeyNotFound):
        ACCOUNT.name_of(identifier)


def test_arns() -> None:
    assert ACCOUNT.key_arn("k") == "arn:aws:kms:eu-central-1:123456789012:key/k"
    assert ACCOUNT.alias_arn("alias/k") == "arn:aws:kms:eu-central-1:123456789012:alias/k"


def test_the_blob_is_the_native_ciphertext_behind_a_header_naming_its_key() -> None:
    native = b"v3:" + bytes(12) + b"sealed"
    blob = to_blob("device123", native)
    assert blob == BLOB_MAGIC + b"\x00\x09device123" + native
    assert from_blob(blob) == ("device123", native)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"v1:" + bytes(40),  # a native ciphertext without the header
        BLOB_MAGIC,
        BLOB_MAGIC + b"\x00",
        BLOB_MAGIC + b"\x00\x09device123",  # no ciphertext
        BLOB_MAGIC + b"\x00\x40device123v1:",  # a length past the end
        BLOB_MAGIC + b"\x00\x02\xff\xfev1:abc",  # not UTF-8
        BLOB_MAGIC + b"\x00\x02../v1:abc",  # not a key id
        b"kms-aws:2:\x00\x01kv1:abc",  # another format version
    ],
)
def test_anything_else_is_an_invalid_ciphertext(blob: bytes) -> None:
    with pytest.raises(errors.InvalidCiphertext):
        from_blob(blob)


def test_every_key_spec_maps_onto_a_kms_algorithm_and_back() -> None:
    names = {
        *ENCRYPTION_ALGORITHMS,
        *RSA_ENCRYPTION_ALGORITHMS,
        *SIGNING_ALGORITHMS,
        *MAC_ALGORITHMS,
    }
    for (spec, usage), (purpose, algorithm) in KEY_SPECS.items():
        assert algorithm in names, algorithm
        assert native_algorithm(spec, usage) == (purpose, algorithm)
        assert SPEC_OF_ALGORITHM[algorithm] == spec
    assert names <= set(SPEC_OF_ALGORITHM)
    with pytest.raises(errors.InvalidRequest):
        native_algorithm("HMAC_256", "ENCRYPT_DECRYPT")


def test_every_signing_algorithm_maps_onto_a_kms_scheme() -> None:
    assert set(SIGNING_ALGORITHMS_OF) == set(SIGNING_ALGORITHMS)
    assert set(RSA_SIGNATURE_SCHEMES) == {
        scheme for scheme, _ in SIGNING.values() if "RSA" in scheme
    }
    for offered in SIGNING_ALGORITHMS_OF.values():
        assert set(offered) <= set(SIGNING)
    assert set(MAC_ALGORITHMS) == {"HMAC-SHA256", "HMAC-SHA512"}


AWS_CODES = [
    (errors.KeyNotFound(), "NotFoundException", 400),
    (errors.KeyDisabled(), "DisabledException", 400),
    (errors.KeyPendingDeletion(), "KMSInvalidStateException", 400),
    (errors.DeletionNotAllowed(), "KMSInvalidStateException", 400),
    (errors.InvalidCiphertext(), "InvalidCiphertextException", 400),
    (errors.IncorrectKey(), "IncorrectKeyException", 400),
    (errors.PurposeMismatch(), "InvalidKeyUsageException", 400),
    (errors.InvalidRequest(), "ValidationException", 400),
    (errors.UnsupportedMediaType(), "ValidationException", 400),
    (errors.PayloadTooLarge(), "ValidationException", 400),
    (errors.Forbidden(), "AccessDeniedException", 400),
    (errors.RateLimited(retry_after=1), "ThrottlingException", 400),
    (errors.InvalidSignature(), "KMSInvalidSignatureException", 400),
    (errors.InvalidMAC(), "KMSInvalidMacException", 400),
    (errors.TooManyVersions(), "LimitExceededException", 400),
    (errors.KeyExists(), "AlreadyExistsException", 400),
    (errors.StoreUnavailable(), "KMSInternalException", 503),
    (errors.IntegrityFailure("detail"), "KMSInternalException", 500),
]


@pytest.mark.parametrize(
    ("error", "code", "status"), AWS_CODES, ids=[type(row[0]).__name__ for row in AWS_CODES]
)
def test_each_domain_error_has_its_aws_code(error: errors.KMSError, code: str, status: int) -> None:
    assert aws_code_for(error) == (code, status)


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        ('  account_id: "123456789012"', True),
        ("  account_id: 123456789012", False),  # YAML reads an integer: refused, not mangled
        ('  account_id: "1234"', False),
        ("  region: eu-central-1", True),
        ("  region: Not A Region", False),
    ],
)
def test_the_aws_settings(tmp_path: Path, line: str, accepted: bool) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"database:\n  dsn: kms.db\naws:\n{line}\n", encoding="utf-8")
    if accepted:
        load_settings(path, environ={})
        return
    with pytest.raises(ConfigurationError) as refused:
        load_settings(path, environ={})
    assert "aws." in str(refused.value) and str(path) in str(refused.value)
