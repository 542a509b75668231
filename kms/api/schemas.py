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

from kms.service.keys import MAX_ENCRYPTIONS_PER_VERSION, MAX_PAGE_SIZE

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


class _Request(Schema):
    class Meta:
        unknown = RAISE


class CreateKeyRequest(_Request):
    key_id = fields.String(load_default=None, allow_none=True)
    purpose = fields.String(load_default="encrypt")
    algorithm = fields.String(load_default=None, allow_none=True)
    rotation_period = fields.String(load_default=None, allow_none=True)
    max_encryptions_per_version = StrictInteger(
        low=1, high=MAX_ENCRYPTIONS_PER_VERSION, load_default=None, allow_none=True
    )


class UpdateKeyRequest(_Request):
    """``PATCH``: a field left out stays as it is; ``null`` clears it."""

    rotation_period = fields.String(allow_none=True)
    max_encryptions_per_version = StrictInteger(
        low=1, high=MAX_ENCRYPTIONS_PER_VERSION, allow_none=True
    )


class ListKeysQuery(_Request):
    limit = StrictInteger(low=1, high=MAX_PAGE_SIZE, from_query=True, load_default=100)
    after = fields.String(load_default=None, validate=validate.Length(min=1))


class ListVersionsQuery(_Request):
    limit = StrictInteger(low=1, high=MAX_PAGE_SIZE, from_query=True, load_default=100)
    after = StrictInteger(low=0, high=2**31 - 1, from_query=True, load_default=None)


class PublicKeyQuery(_Request):
    version = StrictInteger(low=1, high=2**31 - 1, from_query=True, load_default=None)


class EncryptRequest(_Request):
    key_id = fields.String(required=True)
    plaintext = StrictBase64(required=True)


class DecryptRequest(_Request):
    key_id = fields.String(required=True)
    ciphertext = fields.String(required=True)


class SignRequest(_Request):
    key_id = fields.String(required=True)
    message = StrictBase64(required=True)


class VerifyRequest(_Request):
    key_id = fields.String(required=True)
    message = StrictBase64(required=True)
    signature = StrictBase64(required=True)


class KeyVersionResponse(Schema):
    version = fields.Integer()
    created_at = fields.DateTime(format="iso")
    encryptions = fields.Integer()
    decryptions = fields.Integer()
    last_used_at = fields.DateTime(format="iso", allow_none=True)


class KeyResponse(Schema):
    key_id = fields.String()
    purpose = fields.String()
    algorithm = fields.String()
    version = fields.Integer()
    created_at = fields.DateTime(format="iso")
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


create_key_request = CreateKeyRequest()
update_key_request = UpdateKeyRequest()
list_keys_query = ListKeysQuery()
list_versions_query = ListVersionsQuery()
public_key_query = PublicKeyQuery()
encrypt_request = EncryptRequest()
decrypt_request = DecryptRequest()
sign_request = SignRequest()
verify_request = VerifyRequest()

key_response = KeyResponse()
key_list_response = KeyResponse(many=True)
key_detail_response = KeyDetailResponse()
key_version_list_response = KeyVersionResponse(many=True)
public_key_response = PublicKeyResponse()
encrypt_response = EncryptResponse()
decrypt_response = DecryptResponse()
sign_response = SignResponse()
