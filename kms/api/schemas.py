"""marshmallow schemas: every request is loaded and every response dumped through one of these.

Schema objects are built once at import: building them per request cost a quarter of the encrypt
path's throughput. Unknown fields are refused so that typos surface. Base64 is decoded here and
nowhere else; below the API everything is bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from kms.crypto.algorithms import DIGEST_ALGORITHMS
from kms.service.keys import (
    MAX_ENCRYPTIONS_PER_VERSION,
    MAX_PAGE_SIZE,
    MAX_PENDING_DAYS,
    MAX_RANDOM_BYTES,
)

_DECIMAL = re.compile(r"[0-9]{1,10}")


class StrictBase64(fields.Field):
    """Standard base64 with padding, nothing else (no whitespace, no URL-safe alphabet)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else base64.b64encode(value).decode("ascii")

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bytes:
        if not isinstance(value, str) or not value.isascii():
            raise ValidationError("must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("must be valid standard base64") from None


class StrictInteger(fields.Field):
    """An integer in JSON, or a plain decimal in a query string; never a bool, float or "3"."""

    def __init__(self, *, low: int, high: int, from_query: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.low, self.high, self.from_query = low, high, from_query

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if self.from_query and isinstance(value, str) and _DECIMAL.fullmatch(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("must be an integer")
        if not self.low <= value <= self.high:
            raise ValidationError(f"must be between {self.low} and {self.high}")
        return value

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> int | None:
        return value


class StrictBoolean(fields.Field):
    """JSON true or false; never 1, 0 or "true"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class _Request(Schema):
    class Meta:
        unknown = RAISE


class CreateKeyRequest(_Request):
    key_id = fields.String(load_default=None, allow_none=True)
    purpose = fields.String(load_default="encrypt")
    algorithm = fields.String(load_default=None, allow_none=True)
    description = fields.String(load_default="")
    labels = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    min_decryption_version = StrictInteger(low=1, high=2**31 - 1, load_default=1)
    deletion_allowed = StrictBoolean(load_default=True)
    rotation_period = fields.String(load_default=None, allow_none=True)
    max_encryptions_per_version = StrictInteger(
        low=1, high=MAX_ENCRYPTIONS_PER_VERSION, load_default=None, allow_none=True
    )


class UpdateKeyRequest(_Request):
    """``PATCH``: a field left out stays as it is; ``null`` clears ``rotation_period`` and
    ``max_encryptions_per_version`` (the other fields take no ``null``)."""

    description = fields.String()
    labels = fields.Dict(keys=fields.String(), values=fields.String())
    min_decryption_version = StrictInteger(low=1, high=2**31 - 1)
    deletion_allowed = StrictBoolean()
    rotation_period = fields.String(allow_none=True)
    max_encryptions_per_version = StrictInteger(
        low=1, high=MAX_ENCRYPTIONS_PER_VERSION, allow_none=True
    )


class TrimRequest(_Request):
    min_available_version = StrictInteger(low=1, high=2**31 - 1, required=True)


class DeleteKeyQuery(_Request):
    pending_days = StrictInteger(low=1, high=MAX_PENDING_DAYS, from_query=True, load_default=None)


class ListKeysQuery(_Request):
    limit = StrictInteger(low=1, high=MAX_PAGE_SIZE, from_query=True, load_default=100)
    after = fields.String(load_default=None, validate=validate.Length(min=1))
    state = fields.String(load_default=None)
    label = fields.String(load_default=None)


class ListVersionsQuery(_Request):
    limit = StrictInteger(low=1, high=MAX_PAGE_SIZE, from_query=True, load_default=100)
    after = StrictInteger(low=0, high=2**31 - 1, from_query=True, load_default=None)


class PublicKeyQuery(_Request):
    version = StrictInteger(low=1, high=2**31 - 1, from_query=True, load_default=None)


class EncryptRequest(_Request):
    key_id = fields.String(required=True)
    plaintext = StrictBase64(required=True)


_VERSION = {"low": 1, "high": 2**31 - 1}


class DecryptRequest(_Request):
    key_id = fields.String(required=True)
    ciphertext = fields.String(required=True)
    #: RSA-OAEP keys only: ``ciphertext`` is then a raw OAEP ciphertext made with this version's
    #: exported public key, not the ``vN:`` form.
    version = StrictInteger(**_VERSION, load_default=None)


class SignRequest(_Request):
    key_id = fields.String(required=True)
    message = StrictBase64(required=True)
    # RSA keys: one of kms.crypto.algorithms.RSA_SIGNATURE_SCHEMES (the service checks it
    # against the key, so that a wrong name for the key's type gets the list that fits).
    signing_algorithm = fields.String(load_default=None)
    prehashed = StrictBoolean(load_default=False)
    digest_algorithm = fields.String(
        load_default=None, validate=validate.OneOf(sorted(DIGEST_ALGORITHMS))
    )


class VerifyRequest(_Request):
    key_id = fields.String(required=True)
    message = StrictBase64(required=True)
    signature = StrictBase64(required=True)
    signing_algorithm = fields.String(load_default=None)
    prehashed = StrictBoolean(load_default=False)
    digest_algorithm = fields.String(
        load_default=None, validate=validate.OneOf(sorted(DIGEST_ALGORITHMS))
    )
    #: Check only this version (any the key has), instead of the newest kms.verifyMaxVersions.
    version = StrictInteger(**_VERSION, load_default=None)


class MACRequest(_Request):
    key_id = fields.String(required=True)
    message = StrictBase64(required=True)


class MACVerifyRequest(MACRequest):
    mac = StrictBase64(required=True)
    version = StrictInteger(**_VERSION, load_default=None)


class RandomRequest(_Request):
    bytes = StrictInteger(low=1, high=MAX_RANDOM_BYTES, required=True)


class KeyVersionResponse(Schema):
    version = fields.Integer()
    created_at = fields.DateTime(format="iso")
    encryptions = fields.Integer()
    decryptions = fields.Integer()
    last_used_at = fields.DateTime(format="iso", allow_none=True)


class UseAttemptResponse(Schema):
    at = fields.String()
    caller = fields.String()
    operation = fields.String()


class KeyResponse(Schema):
    key_id = fields.String()
    purpose = fields.String()
    algorithm = fields.String()
    version = fields.Integer()
    created_at = fields.DateTime(format="iso")
    state = fields.String()
    description = fields.String()
    labels = fields.Dict(keys=fields.String(), values=fields.String())
    min_decryption_version = fields.Integer()
    min_available_version = fields.Integer()
    deletion_allowed = fields.Boolean()
    pending_deletion_at = fields.DateTime(format="iso", allow_none=True)
    use_attempts_while_pending = fields.Integer()
    last_use_attempt = fields.Nested(UseAttemptResponse, allow_none=True)
    rotation_period = fields.String(allow_none=True)
    next_rotation_at = fields.DateTime(format="iso", allow_none=True)
    max_encryptions_per_version = fields.Integer(allow_none=True)


class KeyDetailResponse(KeyResponse):
    key_versions = fields.List(fields.Nested(KeyVersionResponse))


class PublicKeyResponse(Schema):
    key_id = fields.String()
    version = fields.Integer()
    algorithm = fields.String()
    public_key = fields.String()


class EncryptResponse(Schema):
    ciphertext = fields.String()
    key_id = fields.String()
    version = fields.Integer()


class DecryptResponse(Schema):
    plaintext = StrictBase64()
    key_id = fields.String()
    version = fields.Integer()


class SignResponse(Schema):
    signature = StrictBase64()
    key_id = fields.String()
    version = fields.Integer()


class MACResponse(Schema):
    mac = StrictBase64()
    key_id = fields.String()
    version = fields.Integer()


class RandomResponse(Schema):
    random = StrictBase64()


create_key_request = CreateKeyRequest()
update_key_request = UpdateKeyRequest()
trim_request = TrimRequest()
delete_key_query = DeleteKeyQuery()
list_keys_query = ListKeysQuery()
list_versions_query = ListVersionsQuery()
public_key_query = PublicKeyQuery()
encrypt_request = EncryptRequest()
decrypt_request = DecryptRequest()
sign_request = SignRequest()
verify_request = VerifyRequest()
mac_request = MACRequest()
mac_verify_request = MACVerifyRequest()
random_request = RandomRequest()

key_response = KeyResponse()
key_list_response = KeyResponse(many=True)
key_detail_response = KeyDetailResponse()
key_version_list_response = KeyVersionResponse(many=True)
public_key_response = PublicKeyResponse()
encrypt_response = EncryptResponse()
decrypt_response = DecryptResponse()
sign_response = SignResponse()
mac_response = MACResponse()
random_response = RandomResponse()
