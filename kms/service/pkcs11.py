"""The ``pkcs11`` master-key backend: the root secret sealed by an AES-256 key that never leaves
an HSM (python-pkcs11, the ``hsm`` extra).

Settings (``kms.master_key.*``): ``module`` (the PKCS#11 library), ``token_label``,
``key_label`` and ``pin_file`` (the user PIN; the same file rules as the passphrase file).

The HSM's key must be an AES key of 32 bytes, sensitive and not extractable (so it never
leaves the HSM), that may encrypt and decrypt; anything else is refused as a weak
configuration. kms seals its root secret with ``C_Encrypt`` (``CKM_AES_GCM``, a random 96-bit
nonce, the keystore id in the associated data, kms.service.masterkey) and opens it with
``C_Decrypt``: once per process, in gunicorn's master before any worker forks, and in each
operator command. After that the session is closed and the library finalised: no request ever
calls the HSM, and a slow or absent HSM can only stop kms from starting.

Every fault is one ``KeystoreError`` line naming the module, token, key or PIN file and the
cause. python-pkcs11 reports a sealed root secret that the key does not open (another key,
an altered blob) as a bare ``GeneralError`` from SoftHSM2 (``CKR_ENCRYPTED_DATA_INVALID`` or
``CKR_FUNCTION_FAILED`` from others): every PKCS#11 error of the decryption means the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kms.errors import ConfigurationError, KeystoreError, UpgradeNeeded
from kms.service.keyring import zeroise
from kms.service.masterkey import (
    NONCE_BYTES,
    SEALED_BY_PKCS11,
    TAG_BYTES,
    root_secret_aad,
    sealed_body,
)
from kms.service.passphrase import read_secret_file
from kms.settings import DECLARATIONS, Settings
from kms.store.records import ROOT_SECRET

KEY_BYTES = 32


@dataclass(frozen=True)
class HSMSettings:
    module: Path
    token_label: str
    key_label: str
    pin_file: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> HSMSettings:
        """Raise ``ConfigurationError`` naming the first ``kms.master_key.*`` setting that is
        missing."""
        values = {
            attribute: getattr(settings, attribute)
            for attribute in ("pkcs11_module", "pkcs11_token_label", "pkcs11_key_label")
        }
        values["pkcs11_pin_file"] = settings.pkcs11_pin_file
        for attribute, value in values.items():
            if value is None:
                raise ConfigurationError(
                    f"{DECLARATIONS[attribute].key} is not set, and kms.master_key.backend is "
                    f"pkcs11 ({settings.source})"
                )
        return cls(
            module=values["pkcs11_module"],
            token_label=values["pkcs11_token_label"],
            key_label=values["pkcs11_key_label"],
            pin_file=values["pkcs11_pin_file"],
        )

    @property
    def key_name(self) -> str:
        return f"key {self.key_label!r} of token {self.token_label!r}"


def _library() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise ConfigurationError(
            "kms.master_key.backend is pkcs11, but python-pkcs11 is not installed: "
            "pip install 'kms[hsm]'"
        ) from None
    return pkcs11


class HSMSession:
    """A logged-in session on the token, and the library it came from; ``close`` logs out,
    closes it and finalises the library (so the next one in this process starts afresh)."""

    def __init__(self, hsm: HSMSettings, *, rw: bool = False) -> None:
        self.hsm = hsm
        self.pkcs11 = _library()
        errors = self.pkcs11.exceptions
        if not hsm.module.is_file():
            raise KeystoreError(
                f"the PKCS#11 module {hsm.module} does not exist (kms.master_key.module)"
            )
        pin = read_secret_file(hsm.pin_file, "PIN file")
        try:
            try:
                self._lib = self.pkcs11.lib(str(hsm.module))
            except errors.PKCS11Error as error:
                raise KeystoreError(
                    f"{hsm.module} is not a PKCS#11 library that loads here "
                    f"(kms.master_key.module): {_cause(error)}"
                ) from None
            try:
                self.session = self._open(errors, pin.decode("utf-8"), rw)
            except BaseException:
                self._lib.finalize()
                raise
        except UnicodeDecodeError:
            raise KeystoreError(f"the PIN in {hsm.pin_file} is not UTF-8") from None
        finally:
            zeroise(pin)

    def _open(self, errors: Any, pin: str, rw: bool) -> Any:
        hsm = self.hsm
        try:
            token = self._lib.get_token(token_label=hsm.token_label)
        except errors.NoSuchToken:
            raise KeystoreError(
                f"no token labelled {hsm.token_label!r} in {hsm.module} "
                "(kms.master_key.token_label)"
            ) from None
        except errors.MultipleTokensReturned:
            raise KeystoreError(
                f"more than one token is labelled {hsm.token_label!r} in {hsm.module} "
                "(kms.master_key.token_label): ambiguous, refused; give each token a label of "
                "its own"
            ) from None
        try:
            return token.open(rw=rw, user_pin=pin)
        except (errors.PinIncorrect, errors.PinInvalid, errors.PinLenRange):
            raise KeystoreError(
                f"the PIN in {hsm.pin_file} is wrong for token {hsm.token_label!r}"
            ) from None
        except errors.PinLocked:
            raise KeystoreError(
                f"the user PIN of token {hsm.token_label!r} is locked (too many wrong PINs): "
                "the token's security officer must reset it"
            ) from None
        except errors.UserPinNotInitialized:
            raise KeystoreError(
                f"token {hsm.token_label!r} has no user PIN yet: the security officer sets it"
            ) from None
        except errors.PKCS11Error as error:
            raise KeystoreError(
                f"cannot log in to token {hsm.token_label!r}: {_cause(error)}"
            ) from None

    def find_key(self) -> Any | None:
        """The secret key labelled ``key_label``, or None; ``KeystoreError`` if ambiguous."""
        attribute = self.pkcs11.Attribute
        # Read to the end: a search left open would be finalised after the library is.
        found = list(
            self.session.get_objects(
                {
                    attribute.CLASS: self.pkcs11.ObjectClass.SECRET_KEY,
                    attribute.LABEL: self.hsm.key_label,
                }
            )
        )
        if len(found) > 1:
            raise KeystoreError(
                f"token {self.hsm.token_label!r} holds more than one secret key labelled "
                f"{self.hsm.key_label!r} (kms.master_key.key_label): ambiguous, refused"
            )
        return found[0] if found else None

    def require_strong(self, key: Any) -> None:
        """Refuse a key that is not AES-256, sensitive, not extractable, able to encrypt and
        decrypt, and kept in the token."""
        attribute = self.pkcs11.Attribute
        problems = []
        if key.key_type != self.pkcs11.KeyType.AES:
            problems.append("not an AES key")
        elif key[attribute.VALUE_LEN] != KEY_BYTES:
            problems.append(f"{key[attribute.VALUE_LEN] * 8} bits, not 256")
        if not key[attribute.SENSITIVE]:
            problems.append("not sensitive")
        if key[attribute.EXTRACTABLE]:
            problems.append("extractable")
        if not key[attribute.TOKEN]:
            problems.append("a session object, not kept in the token")
        if not (key[attribute.ENCRYPT] and key[attribute.DECRYPT]):
            problems.append("not allowed to encrypt and decrypt")
        if problems:
            raise KeystoreError(
                f"refusing the {self.hsm.key_name}: it is {', '.join(problems)} (a weak "
                "configuration: kms needs a sensitive, non-extractable AES-256 key)"
            )

    def close(self) -> None:
        try:
            self.session.close()
        finally:
            self._lib.finalize()


def _cause(error: Exception) -> str:
    text = str(error).strip()
    return " ".join(text.split()) if text else type(error).__name__


class PKCS11Backend:
    """The root secret sealed and opened inside the HSM by the configured key."""

    name = "pkcs11"

    def __init__(self, session: HSMSession) -> None:
        self._session = session
        key = session.find_key()
        if key is None:
            raise KeystoreError(
                f"token {session.hsm.token_label!r} holds no secret key labelled "
                f"{session.hsm.key_label!r} (kms.master_key.key_label): create it with "
                "`kms hsm init`"
            )
        session.require_strong(key)
        self._key = key

    def __repr__(self) -> str:
        return f"PKCS11Backend({self._session.hsm.key_name})"

    def _params(self, nonce: bytes, keystore_id: bytes) -> Any:
        from pkcs11.mechanisms import GCMParams

        return GCMParams(nonce, root_secret_aad(self.name, keystore_id), TAG_BYTES * 8)

    def seal(self, root_secret: bytearray, keystore_id: bytes) -> dict[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        try:
            sealed = self._key.encrypt(
                bytes(root_secret),
                mechanism=self._session.pkcs11.Mechanism.AES_GCM,
                mechanism_param=self._params(nonce, keystore_id),
            )
        except self._session.pkcs11.exceptions.PKCS11Error as error:
            raise KeystoreError(
                f"the {self._session.hsm.key_name} cannot seal the root secret: {_cause(error)}"
            ) from None
        return {ROOT_SECRET: SEALED_BY_PKCS11 + nonce + bytes(sealed)}

    def unseal(self, rows: Mapping[str, bytes], keystore_id: bytes) -> bytearray:
        body = sealed_body(rows, self.name)
        try:
            return bytearray(
                self._key.decrypt(
                    body[NONCE_BYTES:],
                    mechanism=self._session.pkcs11.Mechanism.AES_GCM,
                    mechanism_param=self._params(body[:NONCE_BYTES], keystore_id),
                )
            )
        except self._session.pkcs11.exceptions.PKCS11Error:
            raise KeystoreError(
                f"the keystore's root secret does not open with the {self._session.hsm.key_name}"
                ": it was sealed by another key (check kms.master_key.token_label and "
                "key_label), or the sealed root secret (root_secret in kms_metadata) was altered"
            ) from None

    def legacy_root(self, rows: Mapping[str, bytes]) -> bytearray:
        raise UpgradeNeeded(
            "the keystore was made before root secrets: run `kms upgrade` with "
            "kms.master_key.backend: passphrase, then `kms rekey --to pkcs11`"
        )

    def close(self) -> None:
        self._session.close()


def open_pkcs11_backend(settings: Settings) -> PKCS11Backend:
    session = HSMSession(HSMSettings.from_settings(settings))
    try:
        return PKCS11Backend(session)
    except BaseException:
        session.close()
        raise


def create_hsm_key(settings: Settings) -> bool:
    """``kms hsm init``: create the AES-256 key in the token (sensitive, not extractable,
    encrypt and decrypt only, kept in the token) unless it exists. Returns True if it created
    it; an existing key with other attributes is refused and left alone."""
    session = HSMSession(HSMSettings.from_settings(settings), rw=True)
    try:
        existing = session.find_key()
        if existing is not None:
            session.require_strong(existing)
            return False
        attribute = session.pkcs11.Attribute
        session.session.generate_key(
            session.pkcs11.KeyType.AES,
            KEY_BYTES * 8,
            label=session.hsm.key_label,
            store=True,
            template={
                attribute.TOKEN: True,
                attribute.PRIVATE: True,
                attribute.SENSITIVE: True,
                attribute.EXTRACTABLE: False,
                attribute.ENCRYPT: True,
                attribute.DECRYPT: True,
                attribute.WRAP: False,
                attribute.UNWRAP: False,
                attribute.SIGN: False,
                attribute.VERIFY: False,
                attribute.DERIVE: False,
            },
        )
        return True
    finally:
        session.close()
