"""Master key derivation: PBKDF2-HMAC-SHA256 with stored, versioned parameters."""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from kms.errors import KeystoreError

#: The production floor. Tests may derive with fewer iterations; a config file may not.
MIN_ITERATIONS = 600_000
SALT_BYTES = 16
MASTER_KEY_BYTES = 32

_ENCODED = re.compile(r"\$pbkdf2-sha256\$i=([1-9][0-9]{0,9}),l=(32)\$([A-Za-z0-9+/]{22}==)")


@dataclass(frozen=True)
class KDFParameters:
    """PBKDF2 parameters, stored beside the salt so that they can be raised later.

    Stored as ``$pbkdf2-sha256$i=<iterations>,l=<length>$<salt, base64>``.
    """

    iterations: int
    salt: bytes
    length: int = MASTER_KEY_BYTES

    @classmethod
    def generate(cls, iterations: int = MIN_ITERATIONS) -> KDFParameters:
        if iterations < 1:
            raise ValueError("iterations must be positive")
        return cls(iterations=iterations, salt=os.urandom(SALT_BYTES))

    def encode(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        return f"$pbkdf2-sha256$i={self.iterations},l={self.length}${salt}"

    @classmethod
    def decode(cls, text: str) -> KDFParameters:
        match = _ENCODED.fullmatch(text)
        if match is None:
            raise KeystoreError("stored KDF parameters are unreadable")
        try:
            salt = base64.b64decode(match.group(3), validate=True)
        except binascii.Error as exc:
            raise KeystoreError("stored KDF parameters are unreadable") from exc
        return cls(iterations=int(match.group(1)), salt=salt, length=int(match.group(2)))


def derive_master_key(passphrase: bytes | bytearray, params: KDFParameters) -> bytearray:
    """Derive the master key into a mutable buffer the caller overwrites when done.

    ``cryptography`` returns an immutable ``bytes``; it is copied out at once and dropped, which
    is as far as Python lets us go (see the README's notes on zeroisation).
    """
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(),
        length=params.length,
        salt=params.salt,
        iterations=params.iterations,
    )
    return bytearray(kdf.derive(bytes(passphrase)))
