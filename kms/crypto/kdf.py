"""Key derivation: PBKDF2-HMAC-SHA256 from a passphrase, with stored, versioned parameters; and
HKDF-SHA256 of the keystore's root secret into sub-keys, one per label (``derive_key``).

The parameters live in the database, which kms treats as untrusted storage, so they are parsed as
strictly on read as they are written: ASCII only, one canonical spelling, and an iteration count
inside ``[MIN_ITERATIONS, MAX_ITERATIONS]`` (a huge count would stall every start, a small one
would make a copied database cheap to attack). Anything else raises ``InvalidKDFParameters``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from kms.errors import InvalidKDFParameters

#: The production floor, on write and on read.
MIN_ITERATIONS = 600_000
#: The ceiling, on write and on read: about ten seconds of PBKDF2 on a slow core.
MAX_ITERATIONS = 10_000_000
SALT_BYTES = 16
MASTER_KEY_BYTES = 32
SUBKEY_BYTES = 32

_ENCODED = re.compile(rb"\$pbkdf2-sha256\$i=([1-9][0-9]{0,9}),l=(32)\$([A-Za-z0-9+/]{22}==)")


@dataclass(frozen=True)
class KDFParameters:
    """PBKDF2 parameters, stored beside the salt so that they can be raised later.

    Stored as the ASCII text ``$pbkdf2-sha256$i=<iterations>,l=<length>$<salt, base64>``, with
    the iteration count in decimal without leading zeros and the 16-byte salt in standard,
    padded, canonical base64.

    ``min_iterations`` is the floor on write and on read. Production code never passes it: the
    default is ``MIN_ITERATIONS``. Only tests lower it, through
    ``Settings.insecure_test_kdf_floor``, which no configuration file or environment variable
    can set.
    """

    iterations: int
    salt: bytes
    length: int = MASTER_KEY_BYTES

    @classmethod
    def generate(
        cls, iterations: int = MIN_ITERATIONS, *, min_iterations: int = MIN_ITERATIONS
    ) -> KDFParameters:
        check_iterations(iterations, min_iterations)
        return cls(iterations=iterations, salt=os.urandom(SALT_BYTES))

    def encode(self) -> bytes:
        salt = base64.b64encode(self.salt).decode("ascii")
        return f"$pbkdf2-sha256$i={self.iterations},l={self.length}${salt}".encode("ascii")

    @classmethod
    def decode(cls, raw: bytes, *, min_iterations: int = MIN_ITERATIONS) -> KDFParameters:
        if not raw.isascii():
            raise InvalidKDFParameters("the stored KDF parameters hold a non-ASCII byte")
        match = _ENCODED.fullmatch(raw)
        if match is None:
            raise InvalidKDFParameters(
                "the stored KDF parameters are not of the form $pbkdf2-sha256$i=<n>,l=32$<salt>"
            )
        try:
            salt = base64.b64decode(match.group(3), validate=True)
        except binascii.Error as exc:  # pragma: no cover - the pattern admits only valid base64
            raise InvalidKDFParameters("the stored KDF salt is not base64") from exc
        if base64.b64encode(salt) != match.group(3):
            raise InvalidKDFParameters("the stored KDF salt is not in canonical base64")
        iterations = int(match.group(1))
        check_iterations(iterations, min_iterations, stored=True)
        return cls(iterations=iterations, salt=salt, length=int(match.group(2)))


def check_iterations(
    iterations: int, min_iterations: int = MIN_ITERATIONS, *, stored: bool = False
) -> None:
    """Raise ``InvalidKDFParameters`` unless ``min_iterations <= iterations <= MAX_ITERATIONS``."""
    if not min_iterations <= iterations <= MAX_ITERATIONS:
        what = "the stored KDF parameters ask for" if stored else "refusing"
        raise InvalidKDFParameters(
            f"{what} {iterations} PBKDF2 iterations; kms accepts {min_iterations} to "
            f"{MAX_ITERATIONS}"
        )


def derive_master_key(passphrase: bytearray, params: KDFParameters) -> bytearray:
    """Derive the master key straight into a mutable buffer the caller overwrites when done.

    The passphrase buffer is handed to OpenSSL as it is and the key is written into a
    ``bytearray``: no immutable copy of either is made on the Python side.
    """
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(),
        length=params.length,
        salt=params.salt,
        iterations=params.iterations,
    )
    master_key = bytearray(params.length)
    kdf.derive_into(passphrase, master_key)
    return master_key


def derive_key(root_secret: bytearray, label: bytes, length: int = SUBKEY_BYTES) -> bytearray:
    """The sub-key of ``root_secret`` for ``label``: ``HKDF-SHA256(root secret, salt = none,
    info = label)``, written into a mutable buffer the caller overwrites when done.

    Every use of the root secret has a label of its own (kms.service.keyring lists them), so no
    two uses share a key. The root secret is uniformly random (or a PBKDF2 output), which is
    what HKDF's extract step without a salt needs.
    """
    key = bytearray(length)
    HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive_into(
        root_secret, key
    )
    return key
