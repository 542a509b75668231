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
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from kms.errors import IntegrityFailure, InvalidCiphertext, InvalidRequest, InvalidSignature

NONCE_BYTES = 12

AEAD = AESGCM | ChaCha20Poly1305
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class Purpose(StrEnum):
    ENCRYPT = "encrypt"
    SIGN = "sign"
    MAC = "mac"


class AEADKey:
    """A loaded AEAD key: the raw key, with the cipher object built for each call.

    ``cryptography``'s AESGCM keeps OpenSSL contexts ready for use, about 2.7 KB a key (measured,
    cryptography 50), against about 0.1 KB for this object; building one costs about 4 us. A
    worker caches up to ``kms.key_cache_size`` loaded versions, so this keeps 100,000 cached
    versions within tens of MB (docs/operations.md, Memory) for a few microseconds a call. No
    ``repr`` or attribute shows the key.
    """

    __slots__ = ("_aead_class", "_key")

    def __init__(self, key: bytes, aead_class: Callable[[bytes], AEAD]) -> None:
        self._key = key
        self._aead_class = aead_class

    def __repr__(self) -> str:
        return "AEADKey(...)"

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        return self._aead_class(self._key).encrypt(nonce, data, associated_data)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        return self._aead_class(self._key).decrypt(nonce, data, associated_data)


@dataclass(frozen=True)
class EncryptionAlgorithm:
    name: str
    aead_class: Callable[[bytes], AEAD]
    key_bytes: int = 32
    purpose: Purpose = Purpose.ENCRYPT

    def generate(self) -> bytearray:
        return bytearray(os.urandom(self.key_bytes))

    def load(self, secret: bytes | bytearray) -> AEADKey:
        """Load the raw key; raise ``IntegrityFailure`` unless it has this algorithm's size."""
        if len(secret) != self.key_bytes:
            raise IntegrityFailure(
                f"stored key is {len(secret)} bytes; {self.name} needs {self.key_bytes}"
            )
        # A copy on purpose: the caller overwrites ``secret`` once the key is loaded.
        return AEADKey(bytes(secret), self.aead_class)

    def public_key_der(self, secret: bytes | bytearray) -> None:
        return None


#: The digests a client may send to ``sign``/``verify`` with ``prehashed``, by wire name.
DIGEST_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA-256": hashes.SHA256,
    "SHA-384": hashes.SHA384,
    "SHA-512": hashes.SHA512,
}


#: The order n of each curve kms signs ECDSA on (SEC 2, section 2.4), by ``cryptography``'s name.
CURVE_ORDERS: dict[str, int] = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "C7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
}


def low_s(signature: bytes, curve: ec.EllipticCurve) -> bytes:
    """The DER ECDSA signature ``(r, s)`` with ``s`` replaced by ``n - s`` when ``s > n/2``.

    ECDSA is malleable: if ``(r, s)`` verifies, so does ``(r, n - s)``, so anyone can turn a
    signature into a second valid one for the same message. kms signs only with the lower of the
    two (as Bitcoin's BIP 62 and Ethereum's EIP-2 require), so each signature it makes has one
    form, and ``require_low_s`` on verify can refuse the other.
    """
    r, s = decode_dss_signature(signature)
    order = CURVE_ORDERS[curve.name]
    if s > order // 2:
        return encode_dss_signature(r, order - s)
    return signature


def is_low_s(signature: bytes, curve: ec.EllipticCurve) -> bool:
    """True when a DER ECDSA signature's ``s`` is at most ``n/2``; raises ``ValueError`` when it
    is not DER."""
    _, s = decode_dss_signature(signature)
    return s <= CURVE_ORDERS[curve.name] // 2


@dataclass(frozen=True)
class SignatureScheme:
    """How a key signs: the digest and, for RSA, the padding.

    ``digest`` is None for Ed25519, which hashes the message itself and cannot sign a digest.
    RSA-PSS uses MGF1 with the same digest and a salt as long as the digest (32, 48 or 64 bytes):
    the setting openssl and most verifiers accept without extra options.
    """

    name: str
    digest: str | None
    rsa_padding: str | None = None  # "pss" or "pkcs1v15"; None for ECDSA and Ed25519

    def _padding(self) -> padding.AsymmetricPadding:
        if self.rsa_padding == "pkcs1v15":
            return padding.PKCS1v15()
        return padding.PSS(
            mgf=padding.MGF1(DIGEST_ALGORITHMS[self.digest or "SHA-256"]()),
            salt_length=padding.PSS.DIGEST_LENGTH,
        )

    def _hash(self, message: bytes, prehashed: bool) -> hashes.HashAlgorithm | Prehashed:
        """The hash argument for ``cryptography``; checks a prehashed digest's length."""
        if self.digest is None:
            raise InvalidRequest(
                f"{self.name} cannot sign or verify a prehashed digest: send the message itself"
            )
        algorithm = DIGEST_ALGORITHMS[self.digest]()
        if not prehashed:
            return algorithm
        if len(message) != algorithm.digest_size:
            raise InvalidRequest(
                f"a prehashed {self.digest} digest is {algorithm.digest_size} bytes, "
                f"got {len(message)}"
            )
        return Prehashed(algorithm)

    def sign(self, private_key: PrivateKey, message: bytes, *, prehashed: bool = False) -> bytes:
        """Sign ``message`` (or, with ``prehashed``, the digest of the original data)."""
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            if prehashed:
                self._hash(message, prehashed)  # raises: Ed25519 has no digest
            return private_key.sign(message)
        algorithm = self._hash(message, prehashed)
        if isinstance(private_key, rsa.RSAPrivateKey):
            return private_key.sign(message, self._padding(), algorithm)
        return low_s(private_key.sign(message, ec.ECDSA(algorithm)), private_key.curve)

    def verify(
        self,
        public_key: PublicKey,
        message: bytes,
        signature: bytes,
        *,
        prehashed: bool = False,
        require_low_s: bool = False,
    ) -> None:
        """Raise ``kms.errors.InvalidSignature`` unless the signature is valid.

        With ``require_low_s`` an ECDSA signature whose ``s`` exceeds ``n/2`` is invalid too
        (``low_s``): the only form kms makes. Without it both forms verify, as they do for
        openssl, so signatures made elsewhere or by kms before it signed low-s still verify.
        A request that cannot be checked (a digest of the wrong length, Ed25519 with a digest)
        raises ``InvalidRequest`` instead: the caller asked for something that makes no sense.
        """
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            if prehashed:
                self._hash(message, prehashed)  # raises: Ed25519 has no digest
        else:
            algorithm = self._hash(message, prehashed)  # Ed25519 takes none
        try:
            if isinstance(public_key, ed25519.Ed25519PublicKey):
                public_key.verify(signature, message)
            elif isinstance(public_key, rsa.RSAPublicKey):
                public_key.verify(signature, message, self._padding(), algorithm)
            else:
                if require_low_s and not is_low_s(signature, public_key.curve):
                    raise InvalidSignature()
                public_key.verify(signature, message, ec.ECDSA(algorithm))
        except (_CryptographyInvalidSignature, ValueError) as exc:
            raise InvalidSignature() from exc


RSA_SIGNATURE_SCHEMES: dict[str, SignatureScheme] = {
    f"RSA-{kind}-{digest.replace('-', '')}": SignatureScheme(
        f"RSA-{kind}-{digest.replace('-', '')}", digest, kind.lower()
    )
    for kind in ("PSS", "PKCS1v15")
    for digest in DIGEST_ALGORITHMS
}
DEFAULT_RSA_SIGNATURE_SCHEME = "RSA-PSS-SHA256"


class _PrivateKeyMaterial:
    """Generate, load and check PKCS#8 private keys and SubjectPublicKeyInfo public keys.

    Shared by the signing algorithms and RSA-OAEP: the subclass sets ``name``,
    ``new_private_key``, ``key_type``, ``public_key_type`` and ``fits``.
    """

    name: str
    new_private_key: Callable[[], PrivateKey]
    key_type: type
    public_key_type: type
    fits: Callable[[Any], bool]

    def generate(self) -> bytearray:
        private_key = self.new_private_key()
        return bytearray(
            private_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def load(self, secret: bytes | bytearray) -> Any:
        """Load PKCS#8 DER; raise ``IntegrityFailure`` unless it is a key of this algorithm."""
        try:
            private_key = serialization.load_der_private_key(secret, password=None)
        except (ValueError, TypeError) as exc:
            raise IntegrityFailure(f"stored private key is not a readable {self.name} key") from exc
        if not isinstance(private_key, self.key_type) or not self.fits(private_key):
            raise IntegrityFailure(f"stored private key is not a {self.name} key")
        return private_key

    def load_public(self, der: bytes) -> Any:
        """Load SubjectPublicKeyInfo DER; raise ``IntegrityFailure`` unless it fits."""
        try:
            public_key = serialization.load_der_public_key(der)
        except (ValueError, TypeError) as exc:
            raise IntegrityFailure(f"stored public key is not a readable {self.name} key") from exc
        if not isinstance(public_key, self.public_key_type) or not self.fits(public_key):
            raise IntegrityFailure(f"stored public key is not a {self.name} key")
        return public_key

    def public_key_der(self, secret: bytes | bytearray) -> bytes:
        return public_key_der(self.load(secret).public_key())


@dataclass(frozen=True)
class SigningAlgorithm(_PrivateKeyMaterial):
    name: str
    new_private_key: Callable[[], PrivateKey]
    key_type: type
    public_key_type: type
    #: The signature schemes a key of this algorithm offers, by wire name; the first is the
    #: default. Only RSA offers a choice.
    schemes: tuple[SignatureScheme, ...]
    #: True when a loaded key (private or public) has this algorithm's size or curve.
    fits: Callable[[Any], bool] = lambda key: True
    purpose: Purpose = Purpose.SIGN

    def scheme(
        self,
        signing_algorithm: str | None = None,
        *,
        prehashed: bool = False,
        digest_algorithm: str | None = None,
        require_low_s: bool = False,
    ) -> SignatureScheme:
        """The scheme a request asks for; ``InvalidRequest`` names what is wrong with it."""
        if require_low_s and self.key_type is not ec.EllipticCurvePrivateKey:
            # Only ECDSA has a second form to refuse; accepting the option elsewhere would
            # promise a check that does not exist.
            raise InvalidRequest(f"require_low_s is only for ECDSA keys, not {self.name}")
        by_name = {scheme.name: scheme for scheme in self.schemes}
        if signing_algorithm is None:
            chosen = self.schemes[0]
        elif signing_algorithm in by_name:
            chosen = by_name[signing_algorithm]
        else:
            raise InvalidRequest(
                f"signing_algorithm for {self.name} keys must be one of: {', '.join(by_name)}"
            )
        if not prehashed:
            if digest_algorithm is not None:
                raise InvalidRequest("digest_algorithm is only for prehashed: true")
            return chosen
        if chosen.digest is None:
            raise InvalidRequest(
                f"{self.name} cannot sign or verify a prehashed digest: send the message itself"
            )
        if digest_algorithm is None:
            raise InvalidRequest("prehashed: true needs digest_algorithm")
        if digest_algorithm != chosen.digest:
            raise InvalidRequest(
                f"digest_algorithm {digest_algorithm} does not match {chosen.name}, which signs "
                f"a {chosen.digest} digest"
            )
        return chosen

    def sign(
        self,
        private_key: PrivateKey,
        message: bytes,
        scheme: SignatureScheme | None = None,
        *,
        prehashed: bool = False,
    ) -> bytes:
        return (scheme or self.schemes[0]).sign(private_key, message, prehashed=prehashed)

    def verify(
        self,
        public_key: PublicKey,
        message: bytes,
        signature: bytes,
        scheme: SignatureScheme | None = None,
        *,
        prehashed: bool = False,
        require_low_s: bool = False,
    ) -> None:
        """Raise ``kms.errors.InvalidSignature`` unless the signature is valid."""
        (scheme or self.schemes[0]).verify(
            public_key, message, signature, prehashed=prehashed, require_low_s=require_low_s
        )


@dataclass(frozen=True)
class RSAEncryptionAlgorithm(_PrivateKeyMaterial):
    """RSA-OAEP with SHA-256 and MGF1-SHA-256, no label: the public key encrypts offline."""

    name: str
    bits: int
    purpose: Purpose = Purpose.ENCRYPT
    key_type: type = rsa.RSAPrivateKey
    public_key_type: type = rsa.RSAPublicKey

    def new_private_key(self) -> PrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=self.bits)

    def fits(self, key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bool:
        return key.key_size == self.bits

    @property
    def max_plaintext(self) -> int:
        """OAEP's limit: the modulus length minus two digests and two bytes."""
        return self.bits // 8 - 2 * hashes.SHA256.digest_size - 2

    @property
    def ciphertext_bytes(self) -> int:
        return self.bits // 8

    def encrypt(self, public_key: rsa.RSAPublicKey, plaintext: bytes) -> bytes:
        if len(plaintext) > self.max_plaintext:
            raise InvalidRequest(
                f"plaintext is {len(plaintext)} bytes; {self.name} encrypts at most "
                f"{self.max_plaintext} bytes (use an AES-256-GCM key or a data key for more)"
            )
        return public_key.encrypt(plaintext, _OAEP)

    def decrypt(self, private_key: rsa.RSAPrivateKey, ciphertext: bytes) -> bytes:
        """Raise ``InvalidCiphertext`` on any failure, with the same message whatever the cause."""
        if len(ciphertext) != self.ciphertext_bytes:
            raise InvalidCiphertext()
        try:
            return private_key.decrypt(ciphertext, _OAEP)
        except ValueError as exc:
            raise InvalidCiphertext() from exc


_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class HMACKey:
    """A loaded MAC key. No ``repr`` or attribute shows the key."""

    __slots__ = ("_digest", "_key")

    def __init__(self, key: bytes, digest: type[hashes.HashAlgorithm]) -> None:
        self._key = key
        self._digest = digest

    def __repr__(self) -> str:
        return f"HMACKey({self._digest.name})"

    def mac(self, message: bytes) -> bytes:
        h = hmac.HMAC(self._key, self._digest())
        h.update(message)
        return h.finalize()

    def verify(self, message: bytes, tag: bytes) -> None:
        """Raise ``kms.errors.InvalidSignature`` unless ``tag`` is the MAC; constant time
        (``cryptography`` compares with ``CRYPTO_memcmp``)."""
        h = hmac.HMAC(self._key, self._digest())
        h.update(message)
        try:
            h.verify(tag)
        except _CryptographyInvalidSignature as exc:
            raise InvalidSignature() from exc


@dataclass(frozen=True)
class MACAlgorithm:
    name: str
    digest: type[hashes.HashAlgorithm]
    #: As long as the digest's output, as RFC 2104 recommends.
    key_bytes: int
    purpose: Purpose = Purpose.MAC

    def generate(self) -> bytearray:
        return bytearray(os.urandom(self.key_bytes))

    def load(self, secret: bytes | bytearray) -> HMACKey:
        """Load the raw key; raise ``IntegrityFailure`` unless it has this algorithm's size."""
        if len(secret) != self.key_bytes:
            raise IntegrityFailure(
                f"stored key is {len(secret)} bytes; {self.name} needs {self.key_bytes}"
            )
        return HMACKey(bytes(secret), self.digest)

    def key(self, raw: bytes) -> HMACKey:
        """A key of any length, for known-answer tests; stored keys go through ``load``."""
        return HMACKey(raw, self.digest)

    def public_key_der(self, secret: bytes | bytearray) -> None:
        return None


def _rsa(bits: int) -> SigningAlgorithm:
    return SigningAlgorithm(
        name=f"RSA-{bits}",
        new_private_key=lambda: rsa.generate_private_key(public_exponent=65537, key_size=bits),
        key_type=rsa.RSAPrivateKey,
        public_key_type=rsa.RSAPublicKey,
        schemes=(
            RSA_SIGNATURE_SCHEMES[DEFAULT_RSA_SIGNATURE_SCHEME],
            *(
                scheme
                for name, scheme in RSA_SIGNATURE_SCHEMES.items()
                if name != DEFAULT_RSA_SIGNATURE_SCHEME
            ),
        ),
        fits=lambda key: key.key_size == bits,
    )


def _ecdsa(curve: type[ec.EllipticCurve], digest: str) -> SigningAlgorithm:
    size = curve.key_size
    return SigningAlgorithm(
        name=f"ECDSA-P{size}",
        new_private_key=lambda: ec.generate_private_key(curve()),
        key_type=ec.EllipticCurvePrivateKey,
        public_key_type=ec.EllipticCurvePublicKey,
        schemes=(SignatureScheme(f"ECDSA-{digest.replace('-', '')}", digest),),
        fits=lambda key: isinstance(key.curve, curve),
    )


ENCRYPTION_ALGORITHMS: dict[str, EncryptionAlgorithm] = {
    "AES-256-GCM": EncryptionAlgorithm("AES-256-GCM", AESGCM),
    "ChaCha20-Poly1305": EncryptionAlgorithm("ChaCha20-Poly1305", ChaCha20Poly1305),
}

RSA_ENCRYPTION_ALGORITHMS: dict[str, RSAEncryptionAlgorithm] = {
    f"RSA-OAEP-{bits}": RSAEncryptionAlgorithm(f"RSA-OAEP-{bits}", bits)
    for bits in (2048, 3072, 4096)
}

SIGNING_ALGORITHMS: dict[str, SigningAlgorithm] = {
    "RSA-2048": _rsa(2048),
    "RSA-3072": _rsa(3072),
    "RSA-4096": _rsa(4096),
    "ECDSA-P256": _ecdsa(ec.SECP256R1, "SHA-256"),
    "ECDSA-P384": _ecdsa(ec.SECP384R1, "SHA-384"),
    "Ed25519": SigningAlgorithm(
        name="Ed25519",
        new_private_key=ed25519.Ed25519PrivateKey.generate,
        key_type=ed25519.Ed25519PrivateKey,
        public_key_type=ed25519.Ed25519PublicKey,
        schemes=(SignatureScheme("Ed25519", None),),
    ),
}

MAC_ALGORITHMS: dict[str, MACAlgorithm] = {
    "HMAC-SHA256": MACAlgorithm("HMAC-SHA256", hashes.SHA256, 32),
    "HMAC-SHA512": MACAlgorithm("HMAC-SHA512", hashes.SHA512, 64),
}

#: The algorithms whose keys have a public half (stored as DER beside the wrapped private key).
PUBLIC_KEY_ALGORITHMS: dict[str, SigningAlgorithm | RSAEncryptionAlgorithm] = {
    **RSA_ENCRYPTION_ALGORITHMS,
    **SIGNING_ALGORITHMS,
}

Algorithm = EncryptionAlgorithm | RSAEncryptionAlgorithm | SigningAlgorithm | MACAlgorithm

ALGORITHMS: dict[str, Algorithm] = {
    **ENCRYPTION_ALGORITHMS,
    **RSA_ENCRYPTION_ALGORITHMS,
    **SIGNING_ALGORITHMS,
    **MAC_ALGORITHMS,
}

DEFAULT_ALGORITHM: dict[Purpose, str] = {
    Purpose.ENCRYPT: "AES-256-GCM",
    Purpose.SIGN: "ECDSA-P256",
    Purpose.MAC: "HMAC-SHA256",
}


def seal(aead: AEAD | AEADKey, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """Encrypt under a fresh random 96-bit nonce; return ``(nonce, ciphertext || tag)``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, aead.encrypt(nonce, plaintext, aad)


def open_sealed(aead: AEAD | AEADKey, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
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


def ed25519_raw_public_key(pem: str) -> bytes:
    """The 32 raw bytes of an Ed25519 public key given as PEM (as Vault shows it)."""
    public_key = serialization.load_pem_public_key(pem.encode("ascii"))
    if not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
