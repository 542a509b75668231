"""The AWS KMS requests kms serves, with AWS's field names and limits (botocore's model of
``kms/2014-11-01``). Unknown fields are refused (``ValidationException`` naming them), so that a
parameter kms does not honour, such as ``DryRun``, is never silently ignored; ``GrantTokens`` is
accepted and ignored (kms has no grants: the policy decides)."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from kms.api.aws.keys import DATA_KEY_BYTES, KEY_SPECS, SIGNING
from kms.api.schemas import EncryptionContext, StrictBase64
from kms.fields import StrictBoolean, StrictInteger
from kms.service.keys.validation import LABEL_NAME_PATTERN

KEY_ID_LENGTH = validate.Length(min=1, max=2048)
ALIAS_NAME_LENGTH = validate.Length(min=1, max=256)
PLAINTEXT = validate.Length(min=1, max=4096, error="must be 1 to 4096 bytes")
CIPHERTEXT = validate.Length(min=1, max=6144, error="must be 1 to 6144 bytes")
MESSAGE = validate.Length(min=1, max=4096, error="must be 1 to 4096 bytes")
ENCRYPTION_ALGORITHMS = ("SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_256")
MAC_ALGORITHMS = ("HMAC_SHA_256", "HMAC_SHA_512")


class _Request(Schema):
    class Meta:
        unknown = RAISE

    GrantTokens = fields.List(fields.String(), validate=validate.Length(max=10))


class _Context(_Request):
    EncryptionContext = EncryptionContext(load_default=None)


class AWSTagSchema(Schema):
    class Meta:
        unknown = RAISE

    TagKey = fields.String(
        required=True,
        validate=validate.Regexp(
            f"^{LABEL_NAME_PATTERN.pattern}$",
            error="kms keeps tags as labels: 1-63 characters of a-z 0-9 _ . -",
        ),
    )
    TagValue = fields.String(required=True, validate=validate.Length(max=256))


class AWSCreateKeyRequest(Schema):
    class Meta:
        unknown = RAISE

    Description = fields.String(load_default="", validate=validate.Length(max=8192))
    KeyUsage = fields.String(
        load_default="ENCRYPT_DECRYPT", validate=validate.OneOf(sorted({u for _, u in KEY_SPECS}))
    )
    KeySpec = fields.String(
        load_default="SYMMETRIC_DEFAULT",
        validate=validate.OneOf(sorted({s for s, _ in KEY_SPECS})),
    )
    Tags = fields.List(fields.Nested(AWSTagSchema), load_default=list)
    Origin = fields.String(validate=validate.OneOf(["AWS_KMS"]))
    MultiRegion = StrictBoolean(validate=validate.Equal(False, error="must be false"))


class AWSKeyRequest(_Request):
    KeyId = fields.String(required=True, validate=KEY_ID_LENGTH)


class AWSListRequest(Schema):
    class Meta:
        unknown = RAISE

    Limit = StrictInteger(low=1, high=1000, load_default=100)
    Marker = fields.String(load_default=None, validate=validate.Length(min=1, max=1024))


class AWSListTagsRequest(AWSListRequest):
    KeyId = fields.String(required=True, validate=KEY_ID_LENGTH)


class AWSListAliasesRequest(AWSListRequest):
    KeyId = fields.String(validate=validate.Length(min=1, max=2048))
    Limit = StrictInteger(low=1, high=100, load_default=50)


class AWSAliasRequest(Schema):
    class Meta:
        unknown = RAISE

    AliasName = fields.String(required=True, validate=ALIAS_NAME_LENGTH)


class AWSAliasTargetRequest(AWSAliasRequest):
    TargetKeyId = fields.String(required=True, validate=KEY_ID_LENGTH)


class AWSListRotationsRequest(AWSListRequest):
    KeyId = fields.String(required=True, validate=KEY_ID_LENGTH)
    Marker = fields.String(
        load_default=None,
        validate=validate.Regexp(r"^[1-9][0-9]{0,9}$", error="not a marker this listing gave"),
    )


class AWSUpdateDescriptionRequest(AWSKeyRequest):
    Description = fields.String(required=True, validate=validate.Length(max=8192))


class AWSScheduleDeletionRequest(AWSKeyRequest):
    PendingWindowInDays = StrictInteger(low=7, high=30, load_default=30)


class AWSEnableRotationRequest(AWSKeyRequest):
    RotationPeriodInDays = StrictInteger(low=90, high=2560, load_default=365)


class AWSEncryptRequest(_Context):
    KeyId = fields.String(required=True, validate=KEY_ID_LENGTH)
    Plaintext = StrictBase64(required=True, validate=PLAINTEXT)
    EncryptionAlgorithm = fields.String(
        load_default="SYMMETRIC_DEFAULT", validate=validate.OneOf(ENCRYPTION_ALGORITHMS)
    )


class AWSDecryptRequest(_Context):
    KeyId = fields.String(validate=validate.Length(min=1, max=2048))
    CiphertextBlob = StrictBase64(required=True, validate=CIPHERTEXT)
    EncryptionAlgorithm = fields.String(
        load_default="SYMMETRIC_DEFAULT", validate=validate.OneOf(ENCRYPTION_ALGORITHMS)
    )


class AWSReEncryptRequest(_Request):
    CiphertextBlob = StrictBase64(required=True, validate=CIPHERTEXT)
    SourceEncryptionContext = EncryptionContext(load_default=None)
    SourceKeyId = fields.String(validate=validate.Length(min=1, max=2048))
    DestinationKeyId = fields.String(required=True, validate=KEY_ID_LENGTH)
    DestinationEncryptionContext = EncryptionContext(load_default=None)
    SourceEncryptionAlgorithm = fields.String(
        load_default="SYMMETRIC_DEFAULT", validate=validate.Equal("SYMMETRIC_DEFAULT")
    )
    DestinationEncryptionAlgorithm = fields.String(
        load_default="SYMMETRIC_DEFAULT", validate=validate.Equal("SYMMETRIC_DEFAULT")
    )


class AWSDataKeyRequest(_Context):
    KeyId = fields.String(required=True, validate=KEY_ID_LENGTH)
    NumberOfBytes = StrictInteger(low=1, high=1024)
    KeySpec = fields.String(validate=validate.OneOf(sorted(DATA_KEY_BYTES)))


class AWSRandomRequest(Schema):
    class Meta:
        unknown = RAISE

    NumberOfBytes = StrictInteger(low=1, high=1024, required=True)


class AWSSignRequest(_Request):
    KeyId = fields.String(required=True, validate=KEY_ID_LENGTH)
    Message = StrictBase64(required=True, validate=MESSAGE)
    MessageType = fields.String(load_default="RAW", validate=validate.OneOf(["RAW", "DIGEST"]))
    SigningAlgorithm = fields.String(required=True, validate=validate.OneOf(sorted(SIGNING)))


class AWSVerifyRequest(AWSSignRequest):
    Signature = StrictBase64(
        required=True, validate=validate.Length(min=1, max=6144, error="must be 1 to 6144 bytes")
    )


class AWSMacRequest(_Request):
    KeyId = fields.String(required=True, validate=KEY_ID_LENGTH)
    Message = StrictBase64(required=True, validate=MESSAGE)
    MacAlgorithm = fields.String(required=True, validate=validate.OneOf(MAC_ALGORITHMS))


class AWSVerifyMacRequest(AWSMacRequest):
    Mac = StrictBase64(
        required=True, validate=validate.Length(min=1, max=6144, error="must be 1 to 6144 bytes")
    )


class AWSTagResourceRequest(AWSKeyRequest):
    Tags = fields.List(fields.Nested(AWSTagSchema), required=True)


class AWSUntagResourceRequest(AWSKeyRequest):
    TagKeys = fields.List(fields.String(validate=validate.Length(min=1, max=128)), required=True)


create_key_request = AWSCreateKeyRequest()
key_request = AWSKeyRequest()
list_keys_request = AWSListRequest()
list_tags_request = AWSListTagsRequest()
list_aliases_request = AWSListAliasesRequest()
alias_request = AWSAliasRequest()
alias_target_request = AWSAliasTargetRequest()
list_rotations_request = AWSListRotationsRequest()
update_description_request = AWSUpdateDescriptionRequest()
schedule_deletion_request = AWSScheduleDeletionRequest()
enable_rotation_request = AWSEnableRotationRequest()
encrypt_request = AWSEncryptRequest()
decrypt_request = AWSDecryptRequest()
re_encrypt_request = AWSReEncryptRequest()
data_key_request = AWSDataKeyRequest()
random_request = AWSRandomRequest()
sign_request = AWSSignRequest()
verify_request = AWSVerifyRequest()
mac_request = AWSMacRequest()
verify_mac_request = AWSVerifyMacRequest()
tag_resource_request = AWSTagResourceRequest()
untag_resource_request = AWSUntagResourceRequest()
