"""Plain hashes of client data (Vault's ``/transit/hash``), by Vault's names for them."""

from __future__ import annotations

import hashlib

from kms.errors import InvalidRequest

#: Vault's hash names -> hashlib's.
HASH_ALGORITHMS = {
    "sha2-224": "sha224",
    "sha2-256": "sha256",
    "sha2-384": "sha384",
    "sha2-512": "sha512",
    "sha3-224": "sha3_224",
    "sha3-256": "sha3_256",
    "sha3-384": "sha3_384",
    "sha3-512": "sha3_512",
}


def hash_data(algorithm: str, data: bytes) -> bytes:
    """The ``algorithm`` digest of ``data``; ``InvalidRequest`` for a name not listed above."""
    name = HASH_ALGORITHMS.get(algorithm)
    if name is None:
        raise InvalidRequest(f"unsupported hash algorithm {algorithm}")
    return hashlib.new(name, data).digest()
