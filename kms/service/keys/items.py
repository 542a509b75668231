"""One cryptographic operation on a key row already read, checked and found usable.

Each method is the single call's body and also one item of a batch: it gets the key row, the
request's ``RequestMaterial`` (each version loaded at most once per request) and the item's
fields. Ciphertexts are ``v<N>:`` + base64(nonce || ciphertext || tag) with associated data
bound to key_id, version and context (kms.crypto.ciphertext); RSA-OAEP keys use ``v<N>:`` +
base64(OAEP ciphertext), or a raw OAEP ciphertext made offline with the exported public key.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

from kms.crypto.algorithms import RSA_ENCRYPTION_ALGORITHMS, SIGNING_ALGORITHMS, open_sealed, seal
from kms.crypto.ciphertext import (
    ciphertext_aad,
    encode_context,
    format_ciphertext,
    format_versioned,
    parse_ciphertext,
    parse_raw,
    parse_versioned,
)
from kms.errors import (
    FencedCiphertext,
    InvalidCiphertext,
    InvalidRequest,
    InvalidSignature,
    KeyNotFound,
    VersionBelowMinimum,
)
from kms.service.keys.limits import UseLimits
from kms.service.keys.material import RequestMaterial
from kms.service.keys.results import DataKey, Decrypted, Encrypted, MACed, Signed, Verified
from kms.service.keys.validation import DATA_KEY_SIZES
from kms.store.records import KeyRecord


class Items:
    def __init__(self, limits: UseLimits, verify_max_versions: int) -> None:
        self._limits = limits
        self._verify_max_versions = verify_max_versions

    def encrypt(
        self,
        key: KeyRecord,
        material: RequestMaterial,
        plaintext: bytes,
        context: Mapping[str, str] | None = None,
    ) -> Encrypted:
        oaep = RSA_ENCRYPTION_ALGORITHMS.get(key.algorithm)
        if oaep is not None:
            refuse_context(key, context)
            # The public key suffices: encrypting never unwraps the private key.
            sealed = oaep.encrypt(material.public(key.latest_version), plaintext)
            ciphertext = format_versioned(key.latest_version, sealed)
        else:
            aad = ciphertext_aad(key.key_id, key.latest_version, encode_context(context))
            nonce, sealed = seal(material.secret(key.latest_version), plaintext, aad)
            ciphertext = format_ciphertext(key.latest_version, nonce, sealed)
        return Encrypted(
            key_id=key.key_id,
            version=key.latest_version,
            ciphertext=ciphertext,
            algorithm=key.algorithm,
        )

    def decrypt(
        self,
        key: KeyRecord,
        material: RequestMaterial,
        ciphertext: str,
        context: Mapping[str, str] | None = None,
        version: int | None = None,
    ) -> Decrypted:
        oaep = RSA_ENCRYPTION_ALGORITHMS.get(key.algorithm)
        if oaep is None:
            if version is not None:
                raise InvalidRequest(
                    "version is only for raw RSA-OAEP ciphertexts; "
                    f"the ciphertexts of {key.algorithm} keys name their version"
                )
            encoded_context = encode_context(context)
            parsed = parse_ciphertext(ciphertext)
            aead = secret_for_ciphertext(key, material, parsed.version)
            plaintext = open_sealed(
                aead,
                parsed.nonce,
                parsed.sealed,
                ciphertext_aad(key.key_id, parsed.version, encoded_context),
            )
            refuse_fenced(key, parsed.version)
            self._limits.count_use(key.key_id, parsed.version, 1)
            return Decrypted(
                key_id=key.key_id,
                version=parsed.version,
                plaintext=plaintext,
                algorithm=key.algorithm,
            )
        refuse_context(key, context)
        if version is None:
            version, sealed = parse_versioned(ciphertext)
        else:
            sealed = parse_raw(ciphertext)
        private_key = secret_for_ciphertext(key, material, version)
        plaintext = oaep.decrypt(private_key, sealed)
        refuse_fenced(key, version)
        self._limits.count_use(key.key_id, version, 1)
        return Decrypted(
            key_id=key.key_id, version=version, plaintext=plaintext, algorithm=key.algorithm
        )

    def data_key(
        self,
        key: KeyRecord,
        material: RequestMaterial,
        key_bytes: int = 32,
        context: Mapping[str, str] | None = None,
        include_plaintext: bool = True,
    ) -> DataKey:
        if key_bytes not in DATA_KEY_SIZES:
            raise InvalidRequest("bytes: must be 16, 24 or 32")
        data_key = secrets.token_bytes(key_bytes)
        encrypted = self.encrypt(key, material, data_key, context)
        return DataKey(
            key_id=encrypted.key_id,
            version=encrypted.version,
            ciphertext=encrypted.ciphertext,
            plaintext=data_key if include_plaintext else None,
            algorithm=key.algorithm,
        )

    def rewrap(
        self,
        key: KeyRecord,
        material: RequestMaterial,
        ciphertext: str,
        context: Mapping[str, str] | None = None,
    ) -> Encrypted:
        decrypted = self.decrypt(key, material, ciphertext, context)
        return self.encrypt(key, material, decrypted.plaintext, context)

    def sign(
        self,
        key: KeyRecord,
        material: RequestMaterial,
        message: bytes,
        signing_algorithm: str | None = None,
        *,
        prehashed: bool = False,
        digest_algorithm: str | None = None,
    ) -> Signed:
        spec = SIGNING_ALGORITHMS[key.algorithm]
        scheme = spec.scheme(
            signing_algorithm, prehashed=prehashed, digest_algorithm=digest_algorithm
        )
        private_key = material.secret(key.latest_version)
        return Signed(
            key_id=key.key_id,
            version=key.latest_version,
            signature=spec.sign(private_key, message, scheme, prehashed=prehashed),
            algorithm=key.algorithm,
        )

    def verify(
        self,
        key: KeyRecord,
        material: RequestMaterial,
        message: bytes,
        signature: bytes,
        signing_algorithm: str | None = None,
        *,
        prehashed: bool = False,
        digest_algorithm: str | None = None,
        version: int | None = None,
        require_low_s: bool = False,
    ) -> Verified:
        spec = SIGNING_ALGORITHMS[key.algorithm]
        scheme = spec.scheme(
            signing_algorithm,
            prehashed=prehashed,
            digest_algorithm=digest_algorithm,
            require_low_s=require_low_s,
        )

        def signed_by(candidate: int) -> bool:
            try:
                public_key = material.public(candidate)
            except KeyNotFound:
                return False
            try:
                spec.verify(
                    public_key,
                    message,
                    signature,
                    scheme,
                    prehashed=prehashed,
                    require_low_s=require_low_s,
                )
            except InvalidSignature:
                return False
            return True

        return self.verified_by_some_version(key, version, signed_by)

    def mac(self, key: KeyRecord, material: RequestMaterial, message: bytes) -> MACed:
        secret = material.secret(key.latest_version)
        return MACed(
            key_id=key.key_id,
            version=key.latest_version,
            mac=secret.mac(message),
            algorithm=key.algorithm,
        )

    def verify_mac(
        self,
        key: KeyRecord,
        material: RequestMaterial,
        message: bytes,
        mac: bytes,
        version: int | None = None,
    ) -> Verified:
        """Each comparison is constant time; unlike ``verify``, every version tried unwraps
        (once, then cached) its secret key, since a MAC key has no public half."""

        def made_by(candidate: int) -> bool:
            try:
                secret = material.secret(candidate)
            except KeyNotFound:
                return False
            try:
                secret.verify(message, mac)
            except InvalidSignature:
                return False
            return True

        return self.verified_by_some_version(key, version, made_by)

    def verified_by_some_version(
        self, key: KeyRecord, version: int | None, made_by: Callable[[int], bool]
    ) -> Verified:
        """Which version made a signature or MAC: ``version`` only, or else the window.

        The window is the newest ``verify_max_versions`` versions still stored: it keeps a bad
        signature's cost independent of the key's history. Versions in it below
        ``min_decryption_version`` are fenced: tried last, and only to answer 409 rather than
        "invalid" for a signature they made; no version below the window is ever tried. A named
        ``version`` below ``min_decryption_version`` is 409 at once.
        """
        invalid = Verified(key_id=key.key_id, valid=False, version=None, algorithm=key.algorithm)
        if version is not None:
            if not key.min_available_version <= version <= key.latest_version:
                return invalid
            if version < key.min_decryption_version:
                raise VersionBelowMinimum()
            if made_by(version):
                return Verified(
                    key_id=key.key_id, valid=True, version=version, algorithm=key.algorithm
                )
            return invalid
        window_start = max(
            key.min_available_version, key.latest_version - self._verify_max_versions + 1
        )
        allowed_start = max(window_start, key.min_decryption_version)
        for candidate in range(key.latest_version, allowed_start - 1, -1):
            if made_by(candidate):
                return Verified(
                    key_id=key.key_id, valid=True, version=candidate, algorithm=key.algorithm
                )
        for candidate in range(allowed_start - 1, window_start - 1, -1):
            if made_by(candidate):
                raise VersionBelowMinimum()
        return invalid


def secret_for_ciphertext(key: KeyRecord, material: RequestMaterial, version: int) -> Any:
    """The secret a ciphertext names; a version that does not exist is a bad ciphertext.

    A version below ``min_decryption_version`` still gives its secret: the ciphertext is
    authenticated first and only then refused (``refuse_fenced``), so a forgery that names a
    fenced version is answered like any other bad ciphertext, and so is a genuine one.
    """
    if not 1 <= version <= key.latest_version:
        raise InvalidCiphertext()
    try:
        return material.secret(version)
    except KeyNotFound:  # never issued, trimmed, or the key was recreated since
        raise InvalidCiphertext() from None


def refuse_fenced(key: KeyRecord, version: int) -> None:
    """Raise ``FencedCiphertext`` if an authenticated ciphertext's version is fenced off; called
    after authentication, before the plaintext is counted or returned."""
    if version < key.min_decryption_version:
        raise FencedCiphertext(version)


def refuse_context(key: KeyRecord, context: Mapping[str, str] | None) -> None:
    # OAEP here uses no label, so there is nothing to bind a context to; accepting one and
    # ignoring it would promise a binding that does not exist.
    if context:
        raise InvalidRequest(f"{key.algorithm} keys do not support an encryption context")
