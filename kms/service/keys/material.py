"""Key material: unwrapping a checked version row, loading it, and caching what was loaded.

A version's secret (an AEAD key, an HMAC key, a private key) is unwrapped under its identity
(key_id, version, purpose, algorithm, incarnation: kms.crypto.wrapping), loaded into the object
the algorithm uses, and the plaintext copy overwritten. The loaded object is cached under the
key's incarnation (``KeyMaterialCache``, bounded by entries and by estimated bytes), so a
recreated key never meets its old versions. Public keys load from the version row alone:
verifying and RSA-OAEP encryption never unwrap a private key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kms.crypto.algorithms import ALGORITHMS, PUBLIC_KEY_ALGORITHMS
from kms.crypto.wrapping import KeyIdentity
from kms.errors import IntegrityFailure, KeyNotFound, UnwrapFailed
from kms.service.cache import KeyMaterialCache, public_cache_key, secret_cache_key
from kms.service.keyring import Keyring, zeroise
from kms.service.keys.trust import TrustedRows
from kms.store.records import KeyRecord, KeyVersionRecord

log = logging.getLogger("kms.integrity")


def material_bytes(algorithm: str, *, public: bool = False) -> int:
    """About what a loaded key costs in memory, for the material cache's byte bound.

    Measured (RSS over 100,000 entries, cryptography 50, the cache's own bookkeeping included):
    an AEAD key (``AEADKey``: the raw key, not cryptography's AESGCM object, which would keep 2.7
    KB of OpenSSL contexts) or an HMAC key about 0.5 KB; EC and Ed25519 keys well under 1 KB; RSA
    keys grow with their size.
    """
    if algorithm.startswith("RSA"):
        bits = int(algorithm.rsplit("-", 1)[1])
        return bits // 2 if public else bits * 2
    if public:
        return 512
    if algorithm.startswith("ECDSA"):
        return 1024
    return 512


def identity_of(key: KeyRecord, version: int) -> KeyIdentity:
    return KeyIdentity(key.key_id, version, key.purpose, key.algorithm, key.incarnation)


class KeyMaterial:
    def __init__(self, trust: TrustedRows, keyring: Keyring, cache: KeyMaterialCache) -> None:
        self._trust = trust
        self._keyring = keyring
        self._cache = cache

    def secret(self, key: KeyRecord, version: int) -> Any:
        """The loaded secret (AEAD object or private key) of a version, via the cache."""
        cache_key = secret_cache_key(key.key_id, key.incarnation, version)
        loaded = self._cache.get(cache_key)
        if loaded is None:
            loaded = self._load(key, self._trust.version(key, version))
            self._cache.put(cache_key, loaded, material_bytes(key.algorithm))
        return loaded

    def public(self, key: KeyRecord, version: int) -> Any:
        """The loaded public key of a version, via the cache."""
        cache_key = public_cache_key(key.key_id, key.incarnation, version)
        loaded = self._cache.get(cache_key)
        if loaded is None:
            loaded = self._load_public(key, self._trust.version(key, version))
            self._cache.put(cache_key, loaded, material_bytes(key.algorithm, public=True))
        return loaded

    def public_key_der(self, key: KeyRecord, version: int) -> bytes:
        """A version's public key as stored, once it loads for the key's algorithm."""
        record = self._trust.version(key, version)
        if record.public_key is None:  # only signing and RSA-OAEP keys have one
            raise KeyNotFound(key.key_id, version)
        self._load_public(key, record)  # refuse one that does not fit the algorithm
        return record.public_key

    def forget(self, key_id: str) -> None:
        """Drop every loaded version of the key (destroyed, recreated or trimmed)."""
        self._cache.drop_key(key_id)

    def _load(self, key: KeyRecord, record: KeyVersionRecord) -> Any:
        """Unwrap and load a checked version's secret; the key's name goes to the log on failure."""
        try:
            secret = self._keyring.unwrap(record.wrapped_key, identity_of(key, record.version))
        except UnwrapFailed:
            log.error(
                "integrity check failed: key %r: version %d: the wrapped key does not unwrap",
                key.key_id,
                record.version,
            )
            raise
        try:
            return ALGORITHMS[key.algorithm].load(secret)
        except IntegrityFailure as error:
            error.detail = f"key {key.key_id!r}: version {record.version}: {error.detail}"
            log.error("integrity check failed: %s", error.detail)
            raise
        finally:
            zeroise(secret)

    @staticmethod
    def _load_public(key: KeyRecord, record: KeyVersionRecord) -> Any:
        if record.public_key is None:
            raise KeyNotFound(key.key_id, record.version)
        try:
            spec = PUBLIC_KEY_ALGORITHMS.get(key.algorithm)
            if spec is None:
                raise IntegrityFailure(f"a {key.algorithm} key has no public key")
            return spec.load_public(record.public_key)
        except IntegrityFailure as error:
            error.detail = f"key {key.key_id!r}: version {record.version}: {error.detail}"
            log.error("integrity check failed: %s", error.detail)
            raise


class RequestMaterial:
    """A key's loaded versions for one request, a single call or a whole batch: each version's
    secret and public key read and loaded at most once, even with the material cache off."""

    def __init__(self, material: KeyMaterial, key: KeyRecord) -> None:
        self._material = material
        self._key = key
        self._secrets: dict[int, Any] = {}
        self._publics: dict[int, Any] = {}

    def secret(self, version: int) -> Any:
        return self._once(self._secrets, self._material.secret, version)

    def public(self, version: int) -> Any:
        return self._once(self._publics, self._material.public, version)

    def _once(
        self, loaded: dict[int, Any], load: Callable[[KeyRecord, int], Any], version: int
    ) -> Any:
        if version not in loaded:
            try:
                loaded[version] = load(self._key, version)
            except KeyNotFound as missing:  # remembered too: a batch asks once per version
                loaded[version] = missing
        found = loaded[version]
        if isinstance(found, KeyNotFound):
            raise KeyNotFound(found.key_id, found.version)
        return found
