"""marshmallow schemas of the Vault Transit routes: Vault's field names, kms's values.

Base64 is decoded here, Vault's ciphertexts become kms's (``wire``), and a Vault ``context``
becomes kms's encryption context, so a loaded body holds the service's own keywords and values.
Vault options kms does not offer are refused by name (``Unsupported``): a client that asks for
convergent encryption or an exportable key is told so, never silently given something else.
Fields Vault does not know are refused too (Vault would ignore them with a warning): a typo
surfaces. Vault accepts numbers written as strings, and so do these.
"""

from __future__ import annotations

from typing import Any, ClassVar

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from kms.api.schemas import StrictBase64
from kms.api.vault.wire import from_vault_ciphertext, kms_context
from kms.fields import StrictBoolean, StrictInteger


class Unsupported(fields.Field):
    """A Vault option kms does not offer: only its "off" value (left out, null, false, "" or 0,
    as ``allowed`` says) is accepted, and it is dropped from the loaded body."""

    def __init__(self, message: str, allowed: tuple[Any, ...] = (None, False, "", 0)) -> None:
        super().__init__(load_default=None, allow_none=True, metadata={"description": message})
        self.message = message
        self.allowed = allowed

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> None:
        if not any(
            value is off or (value == off and type(value) is type(off)) for off in self.allowed
        ):
            raise ValidationError(self.message)


class VaultContext(fields.Field):
    """Vault's base64 ``context`` as kms's encryption context (``wire.kms_context``)."""

    def __init__(self) -> None:
        super().__init__(load_default=None, allow_none=True)

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> dict[str, str] | None:
        return kms_context(StrictBase64().deserialize(value))


class VaultCiphertext(fields.Field):
    """``vault:v<N>:...`` as kms's ciphertext; a malformed one raises ``InvalidCiphertext`` with
    Vault's message for it."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError("must be a string")
        return from_vault_ciphertext(value)


def _drop_unsupported(schema: Schema, data: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value
        for name, value in data.items()
        if not isinstance(schema.fields.get(name), Unsupported)
    }


class _VaultRequest(Schema):
    class Meta:
        unknown = RAISE

    @post_load
    def drop_unsupported(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return _drop_unsupported(self, data)


NO_NONCE = "nonce: kms makes a fresh random nonce for every encryption (no convergent encryption)"
NO_AAD = "associated_data is not supported by kms; use context, which binds the ciphertext"
NO_PARTIAL_CODE = "partial_failure_response_code is not supported by kms"
LATEST_ONLY = "key_version: kms encrypts and signs with the latest version only; leave it out"


class VaultCreateKeyRequest(_VaultRequest):
    type = fields.String(load_default="aes256-gcm96")
    key_size = StrictInteger(low=0, high=4096, from_text=True, load_default=None, allow_none=True)
    auto_rotate_period = fields.Raw(load_default=None, allow_none=True)
    derived = Unsupported("derived keys are not supported by kms; context binds the ciphertext")
    convergent_encryption = Unsupported("convergent encryption is not supported by kms")
    exportable = Unsupported("exportable keys are not supported: kms never releases key material")
    allow_plaintext_backup = Unsupported(
        "plaintext backups are not supported: kms never releases key material"
    )
    context = Unsupported("context at creation is only for derived keys, which kms does not offer")


class VaultConfigureKeyRequest(_VaultRequest):
    min_decryption_version = StrictInteger(
        low=0, high=2**31 - 1, from_text=True, load_default=None, allow_none=True
    )
    min_encryption_version = Unsupported(
        "min_encryption_version: kms encrypts and signs with the latest version only (0)"
    )
    deletion_allowed = StrictBoolean(load_default=None, allow_none=True)
    auto_rotate_period = fields.Raw(load_default=None, allow_none=True)
    exportable = Unsupported("exportable keys are not supported: kms never releases key material")
    allow_plaintext_backup = Unsupported(
        "plaintext backups are not supported: kms never releases key material"
    )


class VaultTrimRequest(_VaultRequest):
    min_available_version = StrictInteger(low=1, high=2**31 - 1, from_text=True, required=True)


class _OneOrBatch(_VaultRequest):
    """A request on one input, or with ``batch_input`` on each of its items (each loaded with
    the item's schema, kms.api.vault.answers.load_items). Each request declares ``batch_input``
    among its own fields, where its place in the API description is."""

    #: The field that holds the one input, and the refusal of a request with neither.
    one_input: ClassVar[str]
    no_input: ClassVar[str]

    @validates_schema
    def needs_input(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("batch_input") is None and data.get(self.one_input) is None:
            raise ValidationError(self.no_input)


class VaultEncryptItem(_VaultRequest):
    plaintext = StrictBase64(required=True)
    context = VaultContext()
    reference = fields.String(load_default="")
    nonce = Unsupported(NO_NONCE)
    key_version = Unsupported(LATEST_ONLY)
    associated_data = Unsupported(NO_AAD)


class VaultEncryptRequest(_OneOrBatch, VaultEncryptItem):
    one_input, no_input = "plaintext", "missing plaintext to encrypt"
    plaintext = StrictBase64(load_default=None, allow_none=True)
    batch_input = fields.List(fields.Raw(), load_default=None, allow_none=True)
    # Only used by Vault to create a missing key (kms never does): ignored, as Vault ignores it
    # for a key that exists.
    type = fields.String(load_default=None, allow_none=True)
    convergent_encryption = Unsupported("convergent encryption is not supported by kms")
    partial_failure_response_code = Unsupported(NO_PARTIAL_CODE)


class VaultDecryptItem(_VaultRequest):
    ciphertext = VaultCiphertext(required=True)
    context = VaultContext()
    reference = fields.String(load_default="")
    nonce = Unsupported(NO_NONCE)
    associated_data = Unsupported(NO_AAD)


class VaultDecryptRequest(_OneOrBatch, VaultDecryptItem):
    one_input, no_input = "ciphertext", "missing ciphertext to decrypt"
    ciphertext = VaultCiphertext(load_default=None, allow_none=True)
    batch_input = fields.List(fields.Raw(), load_default=None, allow_none=True)
    partial_failure_response_code = Unsupported(NO_PARTIAL_CODE)


class VaultRewrapItem(VaultDecryptItem):
    key_version = Unsupported(LATEST_ONLY)


class VaultRewrapRequest(_OneOrBatch, VaultRewrapItem):
    one_input, no_input = "ciphertext", "missing ciphertext to rewrap"
    ciphertext = VaultCiphertext(load_default=None, allow_none=True)
    batch_input = fields.List(fields.Raw(), load_default=None, allow_none=True)
    partial_failure_response_code = Unsupported(NO_PARTIAL_CODE)


class VaultDataKeyRequest(_VaultRequest):
    context = VaultContext()
    bits = StrictInteger(
        low=128,
        high=512,
        from_text=True,
        load_default=256,
        validate=validate.OneOf((128, 256), error="kms makes data keys of 128 or 256 bits"),
    )
    nonce = Unsupported(NO_NONCE)
    key_version = Unsupported(LATEST_ONLY)
    associated_data = Unsupported(NO_AAD)


class VaultHMACRequest(_VaultRequest):
    input = StrictBase64(required=True)
    algorithm = fields.String(load_default=None, allow_none=True)
    key_version = Unsupported(LATEST_ONLY)
    batch_input = Unsupported("batch_input is not supported by kms for hmac")


class _SigningOptions(_VaultRequest):
    hash_algorithm = fields.String(load_default=None, allow_none=True)
    prehashed = StrictBoolean(load_default=False)
    signature_algorithm = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.OneOf(("pss", "pkcs1v15"), error="unsupported signature algorithm"),
    )
    marshaling_algorithm = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.OneOf(("asn1",), error="kms marshals asn1 only"),
    )
    salt_length = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.OneOf(
            ("hash",), error='kms signs RSA-PSS with a salt as long as the hash ("hash")'
        ),
    )
    context = Unsupported("context is only for derived keys, which kms does not offer")


class VaultSignItem(_VaultRequest):
    input = StrictBase64(required=True)
    reference = fields.String(load_default="")
    context = Unsupported("context is only for derived keys, which kms does not offer")


class VaultSignRequest(_OneOrBatch, _SigningOptions):
    one_input, no_input = "input", "missing input"
    input = StrictBase64(load_default=None, allow_none=True)
    key_version = Unsupported(LATEST_ONLY)
    batch_input = fields.List(fields.Raw(), load_default=None, allow_none=True)


class VaultVerifyRequest(_SigningOptions):
    #: hvac sends the key's name in the body too; it must be the one in the URL.
    name = fields.String(load_default=None, allow_none=True)
    input = StrictBase64(required=True)
    signature = fields.String(load_default=None, allow_none=True)
    hmac = fields.String(load_default=None, allow_none=True)
    algorithm = fields.String(load_default=None, allow_none=True)
    batch_input = Unsupported("batch_input is not supported by kms for verify")

    @validates_schema
    def one_of_signature_or_hmac(self, data: dict[str, Any], **kwargs: Any) -> None:
        if (data.get("signature") is None) == (data.get("hmac") is None):
            raise ValidationError('exactly one of "signature" or "hmac" must be given')


class VaultRandomRequest(_VaultRequest):
    bytes = StrictInteger(low=1, high=1024, from_text=True, load_default=32)
    format = fields.String(
        load_default="base64",
        validate=validate.OneOf(("base64", "hex"), error="unsupported encoding format"),
    )
    source = fields.String(
        load_default="platform",
        validate=validate.OneOf(("platform",), error="kms draws from the platform only"),
    )


class VaultHashRequest(_VaultRequest):
    input = StrictBase64(required=True)
    algorithm = fields.String(load_default="sha2-256")
    format = fields.String(
        load_default="hex",
        validate=validate.OneOf(("base64", "hex"), error="unsupported encoding format"),
    )


class VaultRestoreRequest(_VaultRequest):
    backup = fields.Raw(load_default=None)
    force = fields.Raw(load_default=None)
    name = fields.String(load_default=None, allow_none=True)


class VaultListQuery(_VaultRequest):
    list = StrictBoolean(from_text=True, load_default=False)


class VaultResponse(Schema):
    """Vault's envelope around every answer with a body; ``data`` is the route's answer."""

    request_id = fields.String()
    lease_id = fields.String()
    renewable = fields.Boolean()
    lease_duration = fields.Integer()
    data = fields.Dict(allow_none=True)
    wrap_info = fields.Raw(allow_none=True)
    warnings = fields.List(fields.String(), allow_none=True)
    auth = fields.Raw(allow_none=True)
    mount_type = fields.String()


class VaultErrors(Schema):
    """Every error of a Vault route: ``{"errors": ["..."]}`` (empty for a 404)."""

    errors = fields.List(fields.String(), required=True)


create_key_request = VaultCreateKeyRequest()
configure_key_request = VaultConfigureKeyRequest()
trim_request = VaultTrimRequest()
encrypt_request = VaultEncryptRequest()
encrypt_item = VaultEncryptItem()
decrypt_request = VaultDecryptRequest()
decrypt_item = VaultDecryptItem()
rewrap_request = VaultRewrapRequest()
rewrap_item = VaultRewrapItem()
data_key_request = VaultDataKeyRequest()
hmac_request = VaultHMACRequest()
sign_request = VaultSignRequest()
sign_item = VaultSignItem()
verify_request = VaultVerifyRequest()
random_request = VaultRandomRequest()
hash_request = VaultHashRequest()
restore_request = VaultRestoreRequest()
list_query = VaultListQuery()
vault_response = VaultResponse()
