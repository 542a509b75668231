"""KMSService: key lifecycle and the crypto operations, over a repository and a keyring."""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from kms.crypto.algorithms import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    PUBLIC_KEY_ALGORITHMS,
    RSA_ENCRYPTION_ALGORITHMS,
    SIGNING_ALGORITHMS,
    Algorithm,
    Purpose,
    open_sealed,
    public_key_pem,
    seal,
)
from kms.crypto.ciphertext import (
    ciphertext_aad,
    encode_context,
    format_ciphertext,
    format_versioned,
    parse_ciphertext,
    parse_raw,
    parse_versioned,
)
from kms.crypto.wrapping import KeyIdentity
from kms.errors import (
    IntegrityFailure,
    InvalidCiphertext,
    InvalidRequest,
    InvalidSignature,
    KeyChanged,
    KeyNotFound,
    KMSError,
    PurposeMismatch,
    TooManyVersions,
    UnwrapFailed,
)
from kms.service.cache import KeyMaterialCache
from kms.service.integrity import encode_key_row, encode_version_row
from kms.service.keyring import Keyring, zeroise
from kms.service.keystore import INIT_MARKER_AAD
from kms.settings import (
    DEFAULT_MAX_BATCH_ITEMS,
    DEFAULT_MAX_VERSIONS,
    DEFAULT_VERIFY_MAX_VERSIONS,
)
from kms.store.repository import (
    KeyChange,
    KeyPlanner,
    KeyRecord,
    KeyRepository,
    KeyVersionRecord,
    NewVersion,
    utc_now,
)

log = logging.getLogger("kms.integrity")

KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_PAGE_SIZE = 1000
#: GET /v1/kms/keys/{key_id} lists at most this many of the newest versions; /versions pages.
KEY_DETAIL_VERSIONS = 100
ENABLED = "enabled"
#: POST /v1/kms/random returns at most this many bytes per call.
MAX_RANDOM_BYTES = 1024
#: Key rows whose MAC was verified, kept whole (MAC included) so only an identical row hits.
VERIFIED_ROWS_CACHE_SIZE = 1024
#: The sizes of data key ``generate_data_key`` makes: AES-128, -192 and -256.
DATA_KEY_SIZES = (16, 24, 32)

#: One item of a batch: the single call's keyword arguments but key_id, or the error its
#: parsing raised (kept as that item's result).
BatchItem = Mapping[str, Any] | KMSError


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
class DataKey:
    """A data key: ``ciphertext`` is its encrypted form, ``plaintext`` (None unless asked for)
    the key itself."""

    key_id: str
    version: int
    ciphertext: str
    plaintext: bytes | None

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, version={self.version})"


@dataclass(frozen=True)
class Signed:
    key_id: str
    version: int
    signature: bytes


@dataclass(frozen=True)
class MACed:
    key_id: str
    version: int
    mac: bytes


@dataclass(frozen=True)
class Verified:
    key_id: str
    valid: bool
    version: int | None


@dataclass
class IntegrityReport:
    """What ``check_integrity`` looked at, and a line per row that failed."""

    keys: int = 0
    versions: int = 0
    failures: list[str] = field(default_factory=list)


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
        after_generation: Callable[[str], None] | None = None,
        verify_max_versions: int = DEFAULT_VERIFY_MAX_VERSIONS,
        max_versions: int = DEFAULT_MAX_VERSIONS,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
    ) -> None:
        """``after_generation`` is a test hook: called with the key_id once fresh material is
        generated and before the write transaction starts, so a test can change the key in that
        window deterministically. Production code never passes it."""
        self._repository = repository
        self._keyring = keyring
        self._cache = cache
        self._after_generation = after_generation
        # Encoding and MAC-checking a row costs about 10 us, a hit here about 2.5 us, on a hot
        # path (encrypt on a cached key) of about 190 us (README, Production deployment).
        self._verified_rows = KeyMaterialCache(VERIFIED_ROWS_CACHE_SIZE)
        self._verify_max_versions = verify_max_versions
        self._max_versions = max_versions
        self._max_batch_items = max_batch_items

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
            spec,
            key_id,
            lambda current: record,
            lambda plan: self._repository.create_key(plan(record)),
        )
        return _info(created)

    def get_key(self, key_id: str) -> KeyInfo:
        """The key with its newest KEY_DETAIL_VERSIONS versions (oldest of them first)."""
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))
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
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))
        return [
            KeyVersionInfo(version=v.version, created_at=v.created_at)
            for v in self._repository.version_page(key.key_id, limit, after)
        ]

    def list_keys(self, limit: int = 100, after: str | None = None) -> list[KeyInfo]:
        _check_limit(limit)
        if after is not None:
            validate_key_id(after)
        return [_info(self._checked_key(key)) for key in self._repository.list_keys(limit, after)]

    def delete_key(self, key_id: str) -> None:
        self._repository.delete_key(validate_key_id(key_id))
        self._cache.drop_key(key_id)

    def rotate_key(self, key_id: str) -> KeyInfo:
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))
        if key.latest_version >= self._max_versions:
            # Checked before generating material (an RSA key takes a while), and again under the
            # row's write lock in ``next_version``, where racing rotations cannot slip past.
            raise self._too_many_versions()

        def next_version(current: KeyRecord) -> KeyRecord:
            self._expect_unchanged(key, current)
            if current.latest_version >= self._max_versions:
                raise self._too_many_versions()
            return replace(current, latest_version=current.latest_version + 1)

        rotated = self._store_new_version(
            ALGORITHMS[key.algorithm],
            key_id,
            next_version,
            lambda plan: self._repository.rotate_key(key_id, plan),
        )
        return _info(rotated)

    def _too_many_versions(self) -> TooManyVersions:
        return TooManyVersions(
            f"key has reached the maximum of {self._max_versions} versions (kms.maxVersions); "
            "recreate it or use a new key"
        )

    def recreate_key(self, key_id: str) -> KeyInfo:
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))

        def fresh_incarnation(current: KeyRecord) -> KeyRecord:
            self._expect_unchanged(key, current)
            return replace(
                current,
                latest_version=1,
                incarnation=secrets.token_hex(16),
                created_at=utc_now(),
            )

        recreated = self._store_new_version(
            ALGORITHMS[key.algorithm],
            key_id,
            fresh_incarnation,
            lambda plan: self._repository.recreate_key(key_id, plan),
            replace_versions=True,
        )
        self._cache.drop_key(key_id)
        return _info(recreated)

    def public_key(self, key_id: str, version: int | None = None) -> PublicKeyInfo:
        """The public half of a signing key or an RSA-OAEP encryption key."""
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))
        if key.algorithm not in PUBLIC_KEY_ALGORITHMS:
            raise PurposeMismatch(f"key {key.key_id} ({key.algorithm}) has no public key")
        version = key.latest_version if version is None else version
        return PublicKeyInfo(
            key_id=key.key_id,
            version=version,
            algorithm=key.algorithm,
            public_key=public_key_pem(self._public_key_der(key, version)),
        )

    # -- crypto operations -----------------------------------------------------------------
    #
    # Each operation has a single form and a batch form. The batch form takes a sequence of
    # items, each the single call's keyword arguments but key_id (as the API's item schema
    # loaded them), or the error an item's parsing raised, which keeps its place in the
    # results. The key row is read and checked once per batch and each version's material
    # loaded at most once; a missing key, a purpose mismatch or a disabled key raises for the
    # whole batch, while an item's own failure (InvalidRequest, InvalidCiphertext) becomes its
    # result and the other items go on.

    def encrypt(
        self, key_id: str, plaintext: bytes, context: Mapping[str, str] | None = None
    ) -> Encrypted:
        key = self._usable_key(key_id, Purpose.ENCRYPT)
        return self._encrypt(key, _Material(self, key), plaintext, context)

    def encrypt_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Encrypted | KMSError]:
        self.check_batch_size(len(items))
        key = self._usable_key(key_id, Purpose.ENCRYPT)
        material = _Material(self, key)
        return _each(items, lambda item: self._encrypt(key, material, **item))

    def decrypt(
        self,
        key_id: str,
        ciphertext: str,
        context: Mapping[str, str] | None = None,
        version: int | None = None,
    ) -> Decrypted:
        """Decrypt a ``vN:`` ciphertext, or (RSA-OAEP keys only) a raw OAEP ciphertext made
        offline with the exported public key of ``version``."""
        key = self._usable_key(key_id, Purpose.ENCRYPT)
        return self._decrypt(key, _Material(self, key), ciphertext, context, version)

    def decrypt_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Decrypted | KMSError]:
        self.check_batch_size(len(items))
        key = self._usable_key(key_id, Purpose.ENCRYPT)
        material = _Material(self, key)
        return _each(items, lambda item: self._decrypt(key, material, **item))

    def generate_data_key(
        self,
        key_id: str,
        key_bytes: int = 32,
        context: Mapping[str, str] | None = None,
        include_plaintext: bool = True,
    ) -> DataKey:
        """A fresh random data key, encrypted under the latest version (as ``encrypt`` would).

        Its ciphertext decrypts through ``decrypt`` with the same context. Without
        ``include_plaintext`` only the ciphertext is returned.
        """
        key = self._usable_key(key_id, Purpose.ENCRYPT)
        return self._data_key(key, _Material(self, key), key_bytes, context, include_plaintext)

    def generate_data_key_batch(
        self, key_id: str, items: Sequence[BatchItem]
    ) -> list[DataKey | KMSError]:
        self.check_batch_size(len(items))
        key = self._usable_key(key_id, Purpose.ENCRYPT)
        material = _Material(self, key)
        return _each(items, lambda item: self._data_key(key, material, **item))

    def rewrap(
        self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
    ) -> Encrypted:
        """Decrypt and encrypt again under the latest version, with the same context.

        The plaintext never leaves the service: this is how ciphertexts move forward after a
        rotation. A ciphertext that does not decrypt (wrong context, tampered) is
        ``InvalidCiphertext``, as for ``decrypt``.
        """
        key = self._usable_key(key_id, Purpose.ENCRYPT)
        return self._rewrap(key, _Material(self, key), ciphertext, context)

    def rewrap_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Encrypted | KMSError]:
        self.check_batch_size(len(items))
        key = self._usable_key(key_id, Purpose.ENCRYPT)
        material = _Material(self, key)
        return _each(items, lambda item: self._rewrap(key, material, **item))

    def sign(
        self,
        key_id: str,
        message: bytes,
        signing_algorithm: str | None = None,
        *,
        prehashed: bool = False,
        digest_algorithm: str | None = None,
    ) -> Signed:
        """Sign with the newest version. ``prehashed``: ``message`` is the ``digest_algorithm``
        digest of the data, and the signature is the one over the data itself."""
        key = self._usable_key(key_id, Purpose.SIGN)
        return self._sign(
            key,
            _Material(self, key),
            message,
            signing_algorithm,
            prehashed=prehashed,
            digest_algorithm=digest_algorithm,
        )

    def sign_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Signed | KMSError]:
        self.check_batch_size(len(items))
        key = self._usable_key(key_id, Purpose.SIGN)
        material = _Material(self, key)
        return _each(items, lambda item: self._sign(key, material, **item))

    def verify(
        self,
        key_id: str,
        message: bytes,
        signature: bytes,
        signing_algorithm: str | None = None,
        *,
        prehashed: bool = False,
        digest_algorithm: str | None = None,
        version: int | None = None,
    ) -> Verified:
        """Check the signature against ``version`` only, or else the newest
        ``verify_max_versions`` versions, newest first.

        The bound keeps a bad signature's cost independent of the key's history (a key rotated
        thousands of times must not make every failed verify try thousands of public keys); a
        caller who kept the version from ``sign`` names it and pays for one check, whatever its
        age. Only public keys are used: verification never unwraps a private key.
        """
        key = self._usable_key(key_id, Purpose.SIGN)
        return self._verify(
            key,
            _Material(self, key),
            message,
            signature,
            signing_algorithm,
            prehashed=prehashed,
            digest_algorithm=digest_algorithm,
            version=version,
        )

    def verify_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Verified | KMSError]:
        self.check_batch_size(len(items))
        key = self._usable_key(key_id, Purpose.SIGN)
        material = _Material(self, key)
        return _each(items, lambda item: self._verify(key, material, **item))

    def check_batch_size(self, count: int) -> None:
        """Raise ``InvalidRequest`` unless a batch of ``count`` items is allowed.

        The API calls it before parsing the items, so an oversized batch costs no more than
        reading its body; every batch method calls it again.
        """
        if count < 1:
            raise InvalidRequest("batch: must hold at least one item")
        if count > self._max_batch_items:
            raise InvalidRequest(
                f"batch: at most {self._max_batch_items} items (server.maxBatchItems)"
            )

    # -- one item, on a checked key --------------------------------------------------------

    def _encrypt(
        self,
        key: KeyRecord,
        material: _Material,
        plaintext: bytes,
        context: Mapping[str, str] | None = None,
    ) -> Encrypted:
        oaep = RSA_ENCRYPTION_ALGORITHMS.get(key.algorithm)
        if oaep is not None:
            self._refuse_context(key, context)
            # The public key suffices: encrypting never unwraps the private key.
            sealed = oaep.encrypt(material.public(key.latest_version), plaintext)
            ciphertext = format_versioned(key.latest_version, sealed)
        else:
            aad = ciphertext_aad(key.key_id, key.latest_version, encode_context(context))
            nonce, sealed = seal(material.secret(key.latest_version), plaintext, aad)
            ciphertext = format_ciphertext(key.latest_version, nonce, sealed)
        return Encrypted(key_id=key.key_id, version=key.latest_version, ciphertext=ciphertext)

    def _decrypt(
        self,
        key: KeyRecord,
        material: _Material,
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
            aead = self._secret_for_ciphertext(key, material, parsed.version)
            plaintext = open_sealed(
                aead,
                parsed.nonce,
                parsed.sealed,
                ciphertext_aad(key.key_id, parsed.version, encoded_context),
            )
            return Decrypted(key_id=key.key_id, version=parsed.version, plaintext=plaintext)
        self._refuse_context(key, context)
        if version is None:
            version, sealed = parse_versioned(ciphertext)
        else:
            sealed = parse_raw(ciphertext)
        private_key = self._secret_for_ciphertext(key, material, version)
        return Decrypted(
            key_id=key.key_id, version=version, plaintext=oaep.decrypt(private_key, sealed)
        )

    @staticmethod
    def _secret_for_ciphertext(key: KeyRecord, material: _Material, version: int) -> Any:
        """The secret a ciphertext names; a version that does not exist is a bad ciphertext."""
        if not 1 <= version <= key.latest_version:
            raise InvalidCiphertext()
        try:
            return material.secret(version)
        except KeyNotFound:  # the version was never issued, or the key was recreated since
            raise InvalidCiphertext() from None

    @staticmethod
    def _refuse_context(key: KeyRecord, context: Mapping[str, str] | None) -> None:
        # OAEP here uses no label, so there is nothing to bind a context to; accepting one and
        # ignoring it would promise a binding that does not exist.
        if context:
            raise InvalidRequest(f"{key.algorithm} keys do not support an encryption context")

    def _data_key(
        self,
        key: KeyRecord,
        material: _Material,
        key_bytes: int = 32,
        context: Mapping[str, str] | None = None,
        include_plaintext: bool = True,
    ) -> DataKey:
        if key_bytes not in DATA_KEY_SIZES:
            raise InvalidRequest("bytes: must be 16, 24 or 32")
        data_key = secrets.token_bytes(key_bytes)
        encrypted = self._encrypt(key, material, data_key, context)
        return DataKey(
            key_id=encrypted.key_id,
            version=encrypted.version,
            ciphertext=encrypted.ciphertext,
            plaintext=data_key if include_plaintext else None,
        )

    def _rewrap(
        self,
        key: KeyRecord,
        material: _Material,
        ciphertext: str,
        context: Mapping[str, str] | None = None,
    ) -> Encrypted:
        decrypted = self._decrypt(key, material, ciphertext, context)
        return self._encrypt(key, material, decrypted.plaintext, context)

    def _sign(
        self,
        key: KeyRecord,
        material: _Material,
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
        )

    def _verify(
        self,
        key: KeyRecord,
        material: _Material,
        message: bytes,
        signature: bytes,
        signing_algorithm: str | None = None,
        *,
        prehashed: bool = False,
        digest_algorithm: str | None = None,
        version: int | None = None,
    ) -> Verified:
        spec = SIGNING_ALGORITHMS[key.algorithm]
        scheme = spec.scheme(
            signing_algorithm, prehashed=prehashed, digest_algorithm=digest_algorithm
        )
        for candidate in self._versions_to_try(key, version):
            try:
                public_key = material.public(candidate)
            except KeyNotFound:
                continue
            try:
                spec.verify(public_key, message, signature, scheme, prehashed=prehashed)
            except InvalidSignature:
                continue
            return Verified(key_id=key.key_id, valid=True, version=candidate)
        return Verified(key_id=key.key_id, valid=False, version=None)

    def mac(self, key_id: str, message: bytes) -> MACed:
        key = self._usable_key(key_id, Purpose.MAC)
        secret = self._secret(key, key.latest_version)
        return MACed(key_id=key.key_id, version=key.latest_version, mac=secret.mac(message))

    def verify_mac(
        self, key_id: str, message: bytes, mac: bytes, version: int | None = None
    ) -> Verified:
        """Check a MAC against ``version`` only, or the newest ``verify_max_versions`` versions.

        Each comparison is constant time; unlike ``verify``, every version tried unwraps (once,
        then cached) its secret key, since a MAC key has no public half.
        """
        key = self._usable_key(key_id, Purpose.MAC)
        for candidate in self._versions_to_try(key, version):
            try:
                secret = self._secret(key, candidate)
            except KeyNotFound:
                continue
            try:
                secret.verify(message, mac)
            except InvalidSignature:
                continue
            return Verified(key_id=key.key_id, valid=True, version=candidate)
        return Verified(key_id=key.key_id, valid=False, version=None)

    def _versions_to_try(self, key: KeyRecord, version: int | None) -> range:
        if version is not None:
            # Any version the key has, however old: the caller names the one to check.
            return range(version, version + 1) if 1 <= version <= key.latest_version else range(0)
        # When keys get a min_decryption_version, the lower bound becomes the larger of the two.
        oldest = max(1, key.latest_version - self._verify_max_versions + 1)
        return range(key.latest_version, oldest - 1, -1)

    @staticmethod
    def random_bytes(count: int) -> bytes:
        """``count`` bytes (1..MAX_RANDOM_BYTES) from the operating system's CSPRNG."""
        if isinstance(count, bool) or not isinstance(count, int):
            raise InvalidRequest("bytes must be an integer")
        if not 1 <= count <= MAX_RANDOM_BYTES:
            raise InvalidRequest(f"bytes must be between 1 and {MAX_RANDOM_BYTES}")
        return secrets.token_bytes(count)

    # -- for health checks and metrics -----------------------------------------------------

    def check_ready(self) -> None:
        """Raise unless the database answers and the master key unwraps the init marker."""
        _, marker = self._repository.read_keystore()
        zeroise(self._keyring.unwrap(marker, INIT_MARKER_AAD))

    def algorithm_of(self, key_id: str) -> str:
        return self._repository.get_key(validate_key_id(key_id)).algorithm

    def key_counts_by_state(self) -> dict[str, int]:
        return self._repository.count_keys_by_state()

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _algorithm_for(purpose: str, algorithm: str | None) -> Algorithm:
        try:
            purpose_value = Purpose(purpose)
        except ValueError:
            raise InvalidRequest(
                f"purpose must be one of: {', '.join(p.value for p in Purpose)}"
            ) from None
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
        spec: Algorithm,
        key_id: str,
        next_record: Callable[[KeyRecord], KeyRecord],
        store: Callable[[KeyPlanner], KeyRecord],
        *,
        replace_versions: bool = False,
    ) -> KeyRecord:
        """Generate fresh material, let ``store`` persist it, and overwrite the plaintext copy.

        The material is generated before the write transaction starts: an RSA-4096 key takes far
        longer than the wrap, and the write lock should be held only for the wrap and a few
        statements. Under the lock the repository hands ``plan`` the row as it is now;
        ``next_record`` checks it is still the key the material was made for (or raises
        ``KeyChanged``) and says what the row becomes; ``plan`` seals that row and wraps the
        material under its identity.
        """
        secret = spec.generate()
        public_key = spec.public_key_der(secret)

        def plan(current: KeyRecord) -> KeyChange:
            key = self._sealed(next_record(current))
            identity = KeyIdentity(
                key.key_id, key.latest_version, key.purpose, key.algorithm, key.incarnation
            )
            wrapped_key = self._keyring.wrap(secret, identity.aad())
            version_mac = self._keyring.tag(
                encode_version_row(key, key.latest_version, wrapped_key, public_key)
            )
            return KeyChange(
                key=key,
                version=NewVersion(wrapped_key=wrapped_key, public_key=public_key, mac=version_mac),
                replace_versions=replace_versions,
            )

        try:
            if self._after_generation is not None:
                self._after_generation(key_id)
            return store(plan)
        finally:
            zeroise(secret)

    def _sealed(self, key: KeyRecord) -> KeyRecord:
        return replace(key, mac=self._keyring.tag(encode_key_row(replace(key, mac=None))))

    def _expect_unchanged(self, expected: KeyRecord, current: KeyRecord) -> None:
        """Raise ``KeyChanged`` unless ``current`` is the key the material was generated for."""
        self._checked_key(current)
        if (current.algorithm, current.incarnation) != (expected.algorithm, expected.incarnation):
            raise KeyChanged()

    def _checked_key(self, key: KeyRecord) -> KeyRecord:
        """The key row, once its MAC and its algorithm check out; else log and refuse."""
        if self._verified_rows.get(key) is not None:  # this exact row, MAC included, passed
            return key
        try:
            self._verify_key(key)
        except IntegrityFailure as error:
            log.error("integrity check failed: %s", error.detail)
            raise
        self._verified_rows.put(key, True)
        return key

    def _verify_key(self, key: KeyRecord) -> None:
        self._keyring.verify_tag(encode_key_row(key), key.mac, f"key {key.key_id!r}: key row")
        spec = ALGORITHMS.get(key.algorithm)
        if spec is None or spec.purpose.value != key.purpose:
            raise IntegrityFailure(f"key {key.key_id!r}: algorithm and purpose do not match")

    def _checked_version(self, key: KeyRecord, record: KeyVersionRecord) -> KeyVersionRecord:
        """A version row of a checked key, once its MAC checks out; else log and refuse."""
        try:
            self._verify_version(key, record)
        except IntegrityFailure as error:
            log.error("integrity check failed: %s", error.detail)
            raise
        return record

    def _verify_version(self, key: KeyRecord, record: KeyVersionRecord) -> None:
        encoded = encode_version_row(key, record.version, record.wrapped_key, record.public_key)
        self._keyring.verify_tag(
            encoded, record.mac, f"key {key.key_id!r}: version {record.version}"
        )

    def _usable_key(self, key_id: str, purpose: Purpose) -> KeyRecord:
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))
        if key.purpose != purpose.value:
            raise PurposeMismatch(f"key {key.key_id} has purpose {key.purpose}")
        return key

    def _version(self, key: KeyRecord, version: int) -> KeyVersionRecord:
        if not 1 <= version <= key.latest_version:
            raise KeyNotFound()
        return self._checked_version(key, self._repository.get_version(key.key_id, version))

    def _load(self, key: KeyRecord, record: KeyVersionRecord) -> Any:
        """Unwrap and load a checked version's secret; the key's name goes to the log on failure."""
        identity = KeyIdentity(
            key.key_id, record.version, key.purpose, key.algorithm, key.incarnation
        )
        try:
            secret = self._keyring.unwrap(record.wrapped_key, identity)
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

    def _secret(self, key: KeyRecord, version: int) -> Any:
        """The loaded secret (AEAD object or private key) for a version, via the cache."""
        cache_key = ("secret", key.key_id, key.incarnation, version)
        loaded = self._cache.get(cache_key)
        if loaded is None:
            loaded = self._load(key, self._version(key, version))
            self._cache.put(cache_key, loaded)
        return loaded

    def _public_key_der(self, key: KeyRecord, version: int) -> bytes:
        record = self._version(key, version)
        if record.public_key is None:  # only signing and RSA-OAEP keys have one
            raise KeyNotFound()
        self._load_public(key, record)  # refuse one that does not fit the algorithm
        return record.public_key

    def _load_public(self, key: KeyRecord, record: KeyVersionRecord) -> Any:
        if record.public_key is None:
            raise KeyNotFound()
        try:
            spec = PUBLIC_KEY_ALGORITHMS.get(key.algorithm)
            if spec is None:
                raise IntegrityFailure(f"a {key.algorithm} key has no public key")
            return spec.load_public(record.public_key)
        except IntegrityFailure as error:
            error.detail = f"key {key.key_id!r}: version {record.version}: {error.detail}"
            log.error("integrity check failed: %s", error.detail)
            raise

    def _public(self, key: KeyRecord, version: int) -> Any:
        cache_key = ("public", key.key_id, key.incarnation, version)
        loaded = self._cache.get(cache_key)
        if loaded is None:
            loaded = self._load_public(key, self._version(key, version))
            self._cache.put(cache_key, loaded)
        return loaded

    # -- operator checks -------------------------------------------------------------------

    def check_integrity(self, page_size: int = MAX_PAGE_SIZE) -> IntegrityReport:
        """Verify every key row and version row: MACs, unwrapping, and material that fits.

        For ``kms check``. Failures are collected, not raised, so one report names them all.
        """
        report = IntegrityReport()
        after: str | None = None
        while page := self._repository.list_keys(page_size, after):
            after = page[-1].key_id
            for key in page:
                report.keys += 1
                try:
                    self._verify_key(key)
                except IntegrityFailure as error:
                    report.failures.append(error.detail)
                    continue  # its versions cannot be judged against an untrusted row
                for record in self._repository.list_versions(key.key_id):
                    report.versions += 1
                    try:
                        self._verify_version(key, record)
                        self._verify_material(key, record)
                    except IntegrityFailure as error:
                        report.failures.append(error.detail)
        return report

    def seal_rows(self, init_marker: bytes) -> tuple[int, int]:
        """Compute the MAC of every row of a database made before row MACs (``kms upgrade``).

        Trust on first use, made as safe as it can be: a key row is sealed only if its algorithm
        and purpose agree, and a version row only if its wrapped key unwraps under its identity,
        fits its algorithm and (signing keys) carries the private key's own public key. Anything
        else raises ``IntegrityFailure`` and nothing is written. ``init_marker`` (wrapped under
        the sealed-keystore AAD) is written in the same transaction: from then on a row without
        a MAC is refused. Returns the number of key rows and version rows sealed.
        """

        def seal_key(key: KeyRecord) -> bytes:
            spec = ALGORITHMS.get(key.algorithm)
            if spec is None or spec.purpose.value != key.purpose:
                raise IntegrityFailure(f"key {key.key_id!r}: algorithm and purpose do not match")
            return self._keyring.tag(encode_key_row(replace(key, mac=None)))

        def seal_version(key: KeyRecord, record: KeyVersionRecord) -> bytes:
            self._verify_material(key, record)
            return self._keyring.tag(
                encode_version_row(key, record.version, record.wrapped_key, record.public_key)
            )

        return self._repository.seal_all(seal_key, seal_version, init_marker)

    def _verify_material(self, key: KeyRecord, record: KeyVersionRecord) -> None:
        """Raise ``IntegrityFailure`` unless the version is in range, unwraps under its identity,
        fits its algorithm and (signing keys) its public key is the private key's."""
        where = f"key {key.key_id!r}: version {record.version}"
        if not 1 <= record.version <= key.latest_version:
            raise IntegrityFailure(f"{where}: above the latest version {key.latest_version}")
        identity = KeyIdentity(
            key.key_id, record.version, key.purpose, key.algorithm, key.incarnation
        )
        try:
            secret = self._keyring.unwrap(record.wrapped_key, identity)
        except UnwrapFailed:
            raise IntegrityFailure(f"{where}: the wrapped key does not unwrap") from None
        spec = ALGORITHMS[key.algorithm]
        try:
            spec.load(secret)
            if spec.public_key_der(secret) != record.public_key:
                raise IntegrityFailure("the public key is not the private key's")
        except IntegrityFailure as error:
            raise IntegrityFailure(f"{where}: {error.detail}") from None
        finally:
            zeroise(secret)


class _Material:
    """A key's loaded versions for one request, a single call or a whole batch: each version's
    secret and public key read and loaded at most once, even with the material cache off."""

    def __init__(self, service: KMSService, key: KeyRecord) -> None:
        self._service = service
        self._key = key
        self._secrets: dict[int, Any] = {}
        self._publics: dict[int, Any] = {}

    def secret(self, version: int) -> Any:
        return self._once(self._secrets, self._service._secret, version)

    def public(self, version: int) -> Any:
        return self._once(self._publics, self._service._public, version)

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
            raise KeyNotFound()
        return found


def _each(items: Sequence[BatchItem], one: Callable[[Mapping[str, Any]], Any]) -> list[Any]:
    """``one`` for every item, in order; an item's own failure becomes its result.

    Only the errors a single call answers with a 4xx about its own input are kept per item; a
    fault of the server or the database (integrity failure, storage unavailable) still fails
    the whole batch, as it would the single call.
    """
    results: list[Any] = []
    for item in items:
        if isinstance(item, KMSError):
            results.append(item)
            continue
        try:
            results.append(one(item))
        except (InvalidRequest, InvalidCiphertext) as error:
            results.append(error)
    return results
