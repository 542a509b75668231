"""The data algorithms kms offers, each a small object with generate / load / use.

Secret material is what gets wrapped and stored: the raw key for symmetric algorithms, the private
key as PKCS#8 DER for asymmetric ones. Public keys are SubjectPublicKeyInfo (DER at rest, PEM on
export).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from kms.errors import IntegrityFailure, InvalidCiphertext, InvalidSignature

NONCE_BYTES = 12

AEAD = AESGCM | ChaCha20Poly1305
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class Purpose(StrEnum):
    ENCRYPT = "encrypt"
    SIGN = "sign"


@dataclass(frozen=True)
class EncryptionAlgorithm:
    name: str
    aead_class: Callable[[bytes], AEAD]
    key_bytes: int = 32
    purpose: Purpose = Purpose.ENCRYPT

    def generate(self) -> bytearray:
        return bytearray(os.urandom(self.key_bytes))

    def load(self, secret: bytes | bytearray) -> AEAD:
        """Load the raw key; raise ``IntegrityFailure`` unless it has this algorithm's size."""
        if len(secret) != self.key_bytes:
            raise IntegrityFailure(
                f"stored key is {len(secret)} bytes; {self.name} needs {self.key_bytes}"
            )
        # A copy on purpose: the caller overwrites ``secret`` once the AEAD is built.
        return self.aead_class(bytes(secret))

    def public_key_der(self, secret: bytes | bytearray) -> None:
        return None


@dataclass(frozen=True)
class SigningAlgorithm:
    name: str
    new_private_key: Callable[[], PrivateKey]
    sign_with: Callable[[Any, bytes], bytes]
    verify_with: Callable[[Any, bytes, bytes], None]
    key_type: type
    public_key_type: type
    #: True when a loaded key (private or public) has this algorithm's size or curve.
    fits: Callable[[Any], bool] = lambda key: True
    purpose: Purpose = Purpose.SIGN

    def generate(self) -> bytearray:
        private_key = self.new_private_key()
        return bytearray(
            private_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def load(self, secret: bytes | bytearray) -> PrivateKey:
        """Load PKCS#8 DER; raise ``IntegrityFailure`` unless it is a key of this algorithm."""
        try:
            private_key = serialization.load_der_private_key(secret, password=None)
        except (ValueError, TypeError) as exc:
            raise IntegrityFailure(f"stored private key is not a readable {self.name} key") from exc
        if not isinstance(private_key, self.key_type) or not self.fits(private_key):
            raise IntegrityFailure(f"stored private key is not a {self.name} key")
        return private_key  # type: ignore[return-value]

    def load_public(self, der: bytes) -> PublicKey:
        """Load SubjectPublicKeyInfo DER; raise ``IntegrityFailure`` unless it fits."""
        try:
            public_key = serialization.load_der_public_key(der)
        except (ValueError, TypeError) as exc:
            raise IntegrityFailure(f"stored public key is not a readable {self.name} key") from exc
        if not isinstance(public_key, self.public_key_type) or not self.fits(public_key):
            raise IntegrityFailure(f"stored public key is not a {self.name} key")
        return public_key  # type: ignore[return-value]

    def public_key_der(self, secret: bytes | bytearray) -> bytes:
        return public_key_der(self.load(secret).public_key())

    def sign(self, private_key: PrivateKey, message: bytes) -> bytes:
        return self.sign_with(private_key, message)

    def verify(self, public_key: PublicKey, message: bytes, signature: bytes) -> None:
        """Raise ``kms.errors.InvalidSignature`` unless the signature is valid."""
        try:
            self.verify_with(public_key, message, signature)
        except (_CryptographyInvalidSignature, ValueError) as exc:
            raise InvalidSignature() from exc


# RSA-PSS with SHA-256, MGF1-SHA256 and a salt as long as the digest (32 bytes): the setting that
# openssl and most verifiers accept without extra options.
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def _rsa(bits: int) -> SigningAlgorithm:
    return SigningAlgorithm(
        name=f"RSA-{bits}",
        new_private_key=lambda: rsa.generate_private_key(public_exponent=65537, key_size=bits),
        sign_with=lambda key, message: key.sign(message, _PSS, hashes.SHA256()),
        verify_with=lambda key, message, signature: key.verify(
            signature, message, _PSS, hashes.SHA256()
        ),
        key_type=rsa.RSAPrivateKey,
        public_key_type=rsa.RSAPublicKey,
        fits=lambda key: key.key_size == bits,
    )


def _verify_ecdsa(key: ec.EllipticCurvePublicKey, message: bytes, signature: bytes) -> None:
    key.verify(signature, message, ec.ECDSA(hashes.SHA256()))


def _verify_ed25519(key: ed25519.Ed25519PublicKey, message: bytes, signature: bytes) -> None:
    key.verify(signature, message)


ENCRYPTION_ALGORITHMS: dict[str, EncryptionAlgorithm] = {
    "AES-256-GCM": EncryptionAlgorithm("AES-256-GCM", AESGCM),
    "ChaCha20-Poly1305": EncryptionAlgorithm("ChaCha20-Poly1305", ChaCha20Poly1305),
}

SIGNING_ALGORITHMS: dict[str, SigningAlgorithm] = {
    "RSA-2048": _rsa(2048),
    "RSA-3072": _rsa(3072),
    "RSA-4096": _rsa(4096),
    "ECDSA-P256": SigningAlgorithm(
        name="ECDSA-P256",
        new_private_key=lambda: ec.generate_private_key(ec.SECP256R1()),
        sign_with=lambda key, message: key.sign(message, ec.ECDSA(hashes.SHA256())),
        verify_with=_verify_ecdsa,
        key_type=ec.EllipticCurvePrivateKey,
        public_key_type=ec.EllipticCurvePublicKey,
        fits=lambda key: isinstance(key.curve, ec.SECP256R1),
    ),
    "Ed25519": SigningAlgorithm(
        name="Ed25519",
        new_private_key=ed25519.Ed25519PrivateKey.generate,
        sign_with=lambda key, message: key.sign(message),
        verify_with=_verify_ed25519,
        key_type=ed25519.Ed25519PrivateKey,
        public_key_type=ed25519.Ed25519PublicKey,
    ),
}

ALGORITHMS: dict[str, EncryptionAlgorithm | SigningAlgorithm] = {
    **ENCRYPTION_ALGORITHMS,
    **SIGNING_ALGORITHMS,
}

DEFAULT_ALGORITHM: dict[Purpose, str] = {
    Purpose.ENCRYPT: "AES-256-GCM",
    Purpose.SIGN: "ECDSA-P256",
}


def seal(aead: AEAD, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """Encrypt under a fresh random 96-bit nonce; return ``(nonce, ciphertext || tag)``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, aead.encrypt(nonce, plaintext, aad)


def open_sealed(aead: AEAD, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Decrypt and authenticate; raise ``InvalidCiphertext`` on any failure."""
    try:
        return aead.decrypt(nonce, sealed, aad)
    except (InvalidTag, ValueError, OverflowError) as exc:
        raise InvalidCiphertext() from exc


def public_key_der(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(der: bytes) -> PublicKey:
    return serialization.load_der_public_key(der)  # type: ignore[return-value]


def public_key_pem(der: bytes) -> str:
    return (
        load_public_key(der)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
