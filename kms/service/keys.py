"""KMSService: key lifecycle and the crypto operations, over a repository and a keyring."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kms.crypto.algorithms import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    SIGNING_ALGORITHMS,
    EncryptionAlgorithm,
    Purpose,
    SigningAlgorithm,
    load_public_key,
    open_sealed,
    public_key_pem,
    seal,
)
from kms.crypto.ciphertext import ciphertext_aad, format_ciphertext, parse_ciphertext
from kms.crypto.wrapping import key_identity_aad
from kms.errors import (
    InvalidCiphertext,
    InvalidRequest,
    InvalidSignature,
    KeyNotFound,
    PurposeMismatch,
    TooManyVersions,
)
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import Keyring, zeroise
from kms.settings import DEFAULT_MAX_VERSIONS, DEFAULT_VERIFY_MAX_VERSIONS
from kms.store.repository import (
    KeyRecord,
    KeyRepository,
    KeyVersionRecord,
    NewVersion,
    VersionBuilder,
    utc_now,
)

KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_PAGE_SIZE = 1000
#: GET /v1/kms/keys/{key_id} lists at most this many of the newest versions; /versions pages.
KEY_DETAIL_VERSIONS = 100
ENABLED = "enabled"


@dataclass(frozen=True)
class KeyVersionInfo:
    version: int
    created_at: datetime


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    purpose: str
    algorithm: str
    version: int
    created_at: datetime
    key_versions: tuple[KeyVersionInfo, ...] = ()


@dataclass(frozen=True)
class PublicKeyInfo:
    key_id: str
    version: int
    algorithm: str
    public_key: str  # PEM, SubjectPublicKeyInfo


@dataclass(frozen=True)
class Encrypted:
    key_id: str
    version: int
    ciphertext: str


@dataclass(frozen=True)
class Decrypted:
    key_id: str
    version: int
    plaintext: bytes

    def __repr__(self) -> str:
        return f"Decrypted(key_id={self.key_id!r}, version={self.version})"


@dataclass(frozen=True)
class Signed:
    key_id: str
    version: int
    signature: bytes


@dataclass(frozen=True)
class Verified:
    key_id: str
    valid: bool
    version: int | None


def validate_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or KEY_ID_PATTERN.fullmatch(key_id) is None:
        raise InvalidRequest(
            "key_id must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    return key_id


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")


def _info(key: KeyRecord, versions: tuple[KeyVersionInfo, ...] = ()) -> KeyInfo:
    return KeyInfo(
        key_id=key.key_id,
        purpose=key.purpose,
        algorithm=key.algorithm,
        version=key.latest_version,
        created_at=key.created_at,
        key_versions=versions,
    )


class KMSService:
    """Every rule about keys lives here; views only translate HTTP to these calls and back."""

    def __init__(
        self,
        repository: KeyRepository,
        keyring: Keyring,
        cache: KeyMaterialCache,
        *,
        verify_max_versions: int = DEFAULT_VERIFY_MAX_VERSIONS,
        max_versions: int = DEFAULT_MAX_VERSIONS,
    ) -> None:
        self._repository = repository
        self._keyring = keyring
        self._cache = cache
        self._verify_max_versions = verify_max_versions
        self._max_versions = max_versions

    # -- lifecycle -------------------------------------------------------------------------

    def create_key(
        self, key_id: str | None = None, purpose: str = "encrypt", algorithm: str | None = None
    ) -> KeyInfo:
        key_id = str(uuid.uuid4()) if key_id is None else validate_key_id(key_id)
        spec = self._algorithm_for(purpose, algorithm)
        now = utc_now()
        record = KeyRecord(
            key_id=key_id,
            purpose=spec.purpose.value,
            algorithm=spec.name,
            state=ENABLED,
            latest_version=1,
            incarnation=secrets.token_hex(16),
            created_at=now,
        )
        created = self._store_new_version(
            spec, lambda build: self._repository.create_key(record, build)
        )
        return _info(created)

    def get_key(self, key_id: str) -> KeyInfo:
        """The key with its newest KEY_DETAIL_VERSIONS versions (oldest of them first)."""
        key = self._repository.get_key(validate_key_id(key_id))
        versions = tuple(
            KeyVersionInfo(version=v.version, created_at=v.created_at)
            for v in self._repository.newest_versions(key.key_id, KEY_DETAIL_VERSIONS)
        )
        return _info(key, versions)

    def list_versions(
        self, key_id: str, limit: int = 100, after: int | None = None
    ) -> list[KeyVersionInfo]:
        """A page of the key's versions, oldest first, after version ``after``."""
        _check_limit(limit)
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise InvalidRequest("after must be a version number")
        key = self._repository.get_key(validate_key_id(key_id))
        return [
            KeyVersionInfo(version=v.version, created_at=v.created_at)
            for v in self._repository.version_page(key.key_id, limit, after)
        ]

    def list_keys(self, limit: int = 100, after: str | None = None) -> list[KeyInfo]:
        _check_limit(limit)
        if after is not None:
            validate_key_id(after)
        return [_info(key) for key in self._repository.list_keys(limit, after)]

    def delete_key(self, key_id: str) -> None:
        self._repository.delete_key(validate_key_id(key_id))
        self._cache.drop_key(key_id)

    def rotate_key(self, key_id: str) -> KeyInfo:
        key = self._repository.get_key(validate_key_id(key_id))
        if key.latest_version >= self._max_versions:
            # Checked before generating material (an RSA key takes a while); the repository
            # checks again in the rotating UPDATE, where racing rotations cannot slip past.
            raise self._too_many_versions()
        try:
            rotated = self._store_new_version(
                ALGORITHMS[key.algorithm],
                lambda build: self._repository.rotate_key(key_id, build, self._max_versions),
            )
        except TooManyVersions:
            raise self._too_many_versions() from None
        return _info(rotated)

    def _too_many_versions(self) -> TooManyVersions:
        return TooManyVersions(
            f"key has reached the maximum of {self._max_versions} versions (kms.maxVersions); "
            "recreate it or use a new key"
        )

    def recreate_key(self, key_id: str) -> KeyInfo:
        key = self._repository.get_key(validate_key_id(key_id))
        recreated = self._store_new_version(
            ALGORITHMS[key.algorithm],
            lambda build: self._repository.recreate_key(key_id, secrets.token_hex(16), build),
        )
        self._cache.drop_key(key_id)
        return _info(recreated)

    def public_key(self, key_id: str, version: int | None = None) -> PublicKeyInfo:
        key = self._usable_key(key_id, Purpose.SIGN)
        version = key.latest_version if version is None else version
        return PublicKeyInfo(
            key_id=key.key_id,
            version=version,
            algorithm=key.algorithm,
            public_key=public_key_pem(self._public_key_der(key, version)),
        )

    # -- crypto operations -----------------------------------------------------------------

    def encrypt(self, key_id: str, plaintext: bytes, context: bytes = b"") -> Encrypted:
        key = self._usable_key(key_id, Purpose.ENCRYPT)
        aead = self._secret(key, key.latest_version)
        nonce, sealed = seal(
            aead, plaintext, ciphertext_aad(key.key_id, key.latest_version, context)
        )
        return Encrypted(
            key_id=key.key_id,
            version=key.latest_version,
            ciphertext=format_ciphertext(key.latest_version, nonce, sealed),
        )

    def decrypt(self, key_id: str, ciphertext: str, context: bytes = b"") -> Decrypted:
        key = self._usable_key(key_id, Purpose.ENCRYPT)
        parsed = parse_ciphertext(ciphertext)
        if parsed.version > key.latest_version:
            raise InvalidCiphertext()
        try:
            aead = self._secret(key, parsed.version)
        except KeyNotFound:  # the version was never issued, or the key was recreated since
            raise InvalidCiphertext() from None
        plaintext = open_sealed(
            aead, parsed.nonce, parsed.sealed, ciphertext_aad(key.key_id, parsed.version, context)
        )
        return Decrypted(key_id=key.key_id, version=parsed.version, plaintext=plaintext)

    def sign(self, key_id: str, message: bytes) -> Signed:
        key = self._usable_key(key_id, Purpose.SIGN)
        spec = SIGNING_ALGORITHMS[key.algorithm]
        private_key = self._secret(key, key.latest_version)
        return Signed(
            key_id=key.key_id,
            version=key.latest_version,
            signature=spec.sign(private_key, message),
        )

    def verify(self, key_id: str, message: bytes, signature: bytes) -> Verified:
        """Check the signature against the newest ``verify_max_versions`` versions, newest first.

        The bound keeps a bad signature's cost independent of the key's history (a key rotated
        thousands of times must not make every failed verify try thousands of public keys).
        Only public keys are used: verification never unwraps a private key.
        """
        key = self._usable_key(key_id, Purpose.SIGN)
        spec = SIGNING_ALGORITHMS[key.algorithm]
        # When keys get a min_decryption_version, the lower bound becomes the larger of the two.
        oldest = max(1, key.latest_version - self._verify_max_versions + 1)
        for version in range(key.latest_version, oldest - 1, -1):
            try:
                public_key = self._public(key, version)
            except KeyNotFound:
                continue
            try:
                spec.verify(public_key, message, signature)
            except InvalidSignature:
                continue
            return Verified(key_id=key.key_id, valid=True, version=version)
        return Verified(key_id=key.key_id, valid=False, version=None)

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _algorithm_for(
        purpose: str, algorithm: str | None
    ) -> EncryptionAlgorithm | SigningAlgorithm:
        try:
            purpose_value = Purpose(purpose)
        except ValueError:
            raise InvalidRequest("purpose must be one of: encrypt, sign") from None
        name = DEFAULT_ALGORITHM[purpose_value] if algorithm is None else algorithm
        spec = ALGORITHMS.get(name)
        if spec is None:
            raise InvalidRequest(
                f"unknown algorithm; expected one of: {', '.join(sorted(ALGORITHMS))}"
            )
        if spec.purpose is not purpose_value:
            raise PurposeMismatch(f"algorithm {spec.name} cannot be used for purpose {purpose}")
        return spec

    def _store_new_version(
        self,
        spec: EncryptionAlgorithm | SigningAlgorithm,
        store: Callable[[VersionBuilder], KeyRecord],
    ) -> KeyRecord:
        """Generate fresh material, let ``store`` persist it, and overwrite the plaintext copy.

        The material is generated before the write transaction starts: an RSA-4096 key takes far
        longer than the wrap, and the write lock should be held only for the wrap and a few
        statements. The repository fixes the version number and calls ``build`` to wrap under it.
        """
        secret = spec.generate()
        public_key = spec.public_key_der(secret)

        def build(key: KeyRecord, version: int) -> NewVersion:
            aad = key_identity_aad(key.key_id, version, key.purpose, key.algorithm)
            return NewVersion(wrapped_key=self._keyring.wrap(secret, aad), public_key=public_key)

        try:
            return store(build)
        finally:
            zeroise(secret)

    def _usable_key(self, key_id: str, purpose: Purpose) -> KeyRecord:
        key = self._repository.get_key(validate_key_id(key_id))
        if key.purpose != purpose.value:
            raise PurposeMismatch(f"key {key.key_id} has purpose {key.purpose}")
        return key

    def _version(self, key: KeyRecord, version: int) -> KeyVersionRecord:
        if not 1 <= version <= key.latest_version:
            raise KeyNotFound()
        return self._repository.get_version(key.key_id, version)

    def _secret(self, key: KeyRecord, version: int) -> Any:
        """The loaded secret (AEAD object or private key) for a version, via the cache."""
        cache_key = ("secret", key.key_id, key.incarnation, version)
        loaded = self._cache.get(cache_key)
        if loaded is None:
            record = self._version(key, version)
            aad = key_identity_aad(key.key_id, version, key.purpose, key.algorithm)
            secret = self._keyring.unwrap(record.wrapped_key, aad)
            try:
                loaded = ALGORITHMS[key.algorithm].load(secret)
            finally:
                zeroise(secret)
            self._cache.put(cache_key, loaded)
        return loaded

    def _public_key_der(self, key: KeyRecord, version: int) -> bytes:
        record = self._version(key, version)
        if record.public_key is None:  # only signing keys have one
            raise KeyNotFound()
        return record.public_key

    def _public(self, key: KeyRecord, version: int) -> Any:
        cache_key = ("public", key.key_id, key.incarnation, version)
        loaded = self._cache.get(cache_key)
        if loaded is None:
            loaded = load_public_key(self._public_key_der(key, version))
            self._cache.put(cache_key, loaded)
        return loaded
