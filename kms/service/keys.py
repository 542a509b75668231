"""KMSService: key lifecycle and the crypto operations, over a repository and a keyring."""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from kms.crypto.algorithms import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    SIGNING_ALGORITHMS,
    EncryptionAlgorithm,
    Purpose,
    SigningAlgorithm,
    open_sealed,
    public_key_pem,
    seal,
)
from kms.crypto.ciphertext import ciphertext_aad, format_ciphertext, parse_ciphertext
from kms.crypto.wrapping import KeyIdentity
from kms.errors import (
    IntegrityFailure,
    InvalidCiphertext,
    InvalidRequest,
    InvalidSignature,
    KeyChanged,
    KeyNotFound,
    PurposeMismatch,
    TooManyVersions,
    UnwrapFailed,
)
from kms.service.cache import KeyMaterialCache
from kms.service.integrity import encode_key_row, encode_version_row
from kms.service.keyring import Keyring, zeroise
from kms.service.keystore import INIT_MARKER_AAD
from kms.service.usage import EncryptionBudget, UseTally, block_size
from kms.settings import (
    DEFAULT_ENCRYPTION_BLOCK,
    DEFAULT_MAX_ENCRYPTIONS_PER_VERSION,
    DEFAULT_MAX_VERSIONS,
    DEFAULT_VERIFY_MAX_VERSIONS,
)
from kms.store.repository import (
    KeyChange,
    KeyPlanner,
    KeyRecord,
    KeyRepository,
    KeyVersionRecord,
    KeyVersionSummary,
    NewVersion,
    utc_now,
)

log = logging.getLogger("kms.integrity")

KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_PAGE_SIZE = 1000
#: GET /v1/kms/keys/{key_id} lists at most this many of the newest versions; /versions pages.
KEY_DETAIL_VERSIONS = 100
ENABLED = "enabled"
#: Key rows whose MAC was verified, kept whole (MAC included) so only an identical row hits.
VERIFIED_ROWS_CACHE_SIZE = 1024


@dataclass(frozen=True)
class KeyVersionInfo:
    version: int
    created_at: datetime
    #: Encryptions counted against the version's limit (blocks reserved by running processes
    #: included), decryptions (flushed every few seconds) and the last use.
    encryptions: int = 0
    decryptions: int = 0
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    purpose: str
    algorithm: str
    version: int
    created_at: datetime
    key_versions: tuple[KeyVersionInfo, ...] = ()
    rotation_period: str | None = None
    next_rotation_at: datetime | None = None
    max_encryptions_per_version: int | None = None


@dataclass(frozen=True)
class Rotated:
    """A key ``rotate_due`` rotated: its new version."""

    key_id: str
    version: int


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


@dataclass
class IntegrityReport:
    """What ``check_integrity`` looked at, and a line per row that failed."""

    keys: int = 0
    versions: int = 0
    failures: list[str] = field(default_factory=list)


#: Rotation periods: at least an hour, at most ten years; spelled ``<n>d`` or ``<n>h``.
MIN_ROTATION_PERIOD = 3600
MAX_ROTATION_PERIOD = 3650 * 86400
_PERIOD = re.compile(r"([1-9][0-9]{0,5})([dh])")
_UNIT_SECONDS = {"d": 86400, "h": 3600}
#: Never above 2**32 encryptions under one key version: a random 96-bit nonce is safe for about
#: that many (NIST SP 800-38D, 8.3).
MAX_ENCRYPTIONS_PER_VERSION = 2**32
#: How many times an encryption retries after its version ran out (each time another process
#: rotated first and used the new version up before this one got a block of it).
ENCRYPTION_ATTEMPTS = 16


class _NotLatest(Exception):
    """Raised under the row lock when another process already rotated: write nothing."""


def parse_rotation_period(text: object) -> int:
    """``"30d"`` or ``"12h"`` as seconds; at least an hour."""
    match = _PERIOD.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidRequest('rotation_period must look like "30d" or "12h"')
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not MIN_ROTATION_PERIOD <= seconds <= MAX_ROTATION_PERIOD:
        raise InvalidRequest("rotation_period must be at least 1h and at most 3650d")
    return seconds


def format_rotation_period(seconds: int) -> str:
    return f"{seconds // 86400}d" if seconds % 86400 == 0 else f"{seconds // 3600}h"


def validate_max_encryptions(value: object) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_ENCRYPTIONS_PER_VERSION
    ):
        raise InvalidRequest(
            "max_encryptions_per_version must be an integer from 1 to "
            f"{MAX_ENCRYPTIONS_PER_VERSION}"
        )
    return value


def validate_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or KEY_ID_PATTERN.fullmatch(key_id) is None:
        raise InvalidRequest(
            "key_id must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    return key_id


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")


def _version_info(summary: KeyVersionSummary) -> KeyVersionInfo:
    return KeyVersionInfo(
        version=summary.version,
        created_at=summary.created_at,
        encryptions=summary.encryptions,
        decryptions=summary.decryptions,
        last_used_at=summary.last_used_at,
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
        max_encryptions_per_version: int = DEFAULT_MAX_ENCRYPTIONS_PER_VERSION,
        encryption_block: int = DEFAULT_ENCRYPTION_BLOCK,
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
        self._default_max_encryptions = max_encryptions_per_version
        self._encryption_block = encryption_block
        self._budget = EncryptionBudget()
        self._tally = UseTally()

    # -- lifecycle -------------------------------------------------------------------------

    def create_key(
        self,
        key_id: str | None = None,
        purpose: str = "encrypt",
        algorithm: str | None = None,
        *,
        rotation_period: str | None = None,
        max_encryptions_per_version: int | None = None,
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
            rotation_period=None
            if rotation_period is None
            else parse_rotation_period(rotation_period),
            max_encryptions_per_version=None
            if max_encryptions_per_version is None
            else validate_max_encryptions(max_encryptions_per_version),
        )
        created = self._store_new_version(
            spec,
            key_id,
            lambda current: record,
            lambda plan: self._repository.create_key(plan(record)),
        )
        return self._info(created)

    def update_key(
        self,
        key_id: str,
        *,
        rotation_period: str | None | object = ...,
        max_encryptions_per_version: int | None | object = ...,
    ) -> KeyInfo:
        """Change the rotation settings (``PATCH``); an argument left out stays as it is, None
        clears it (no rotation by time; the configured limit)."""
        changes: dict[str, int | None] = {}
        if rotation_period is not ...:
            changes["rotation_period"] = (
                None if rotation_period is None else parse_rotation_period(rotation_period)
            )
        if max_encryptions_per_version is not ...:
            changes["max_encryptions_per_version"] = (
                None
                if max_encryptions_per_version is None
                else validate_max_encryptions(max_encryptions_per_version)
            )

        def plan(current: KeyRecord) -> KeyRecord:
            self._checked_key(current)
            return self._sealed(replace(current, **changes))

        return self._info(self._repository.update_key(validate_key_id(key_id), plan))

    def get_key(self, key_id: str) -> KeyInfo:
        """The key with its newest KEY_DETAIL_VERSIONS versions (oldest of them first)."""
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))
        versions = tuple(
            _version_info(v)
            for v in self._repository.newest_versions(key.key_id, KEY_DETAIL_VERSIONS)
        )
        return self._info(key, versions)

    def list_versions(
        self, key_id: str, limit: int = 100, after: int | None = None
    ) -> list[KeyVersionInfo]:
        """A page of the key's versions, oldest first, after version ``after``."""
        _check_limit(limit)
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise InvalidRequest("after must be a version number")
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))
        return [_version_info(v) for v in self._repository.version_page(key.key_id, limit, after)]

    def list_keys(self, limit: int = 100, after: str | None = None) -> list[KeyInfo]:
        _check_limit(limit)
        if after is not None:
            validate_key_id(after)
        return [
            self._info(self._checked_key(key)) for key in self._repository.list_keys(limit, after)
        ]

    def delete_key(self, key_id: str) -> None:
        self._repository.delete_key(validate_key_id(key_id))
        self._cache.drop_key(key_id)

    def rotate_key(self, key_id: str) -> KeyInfo:
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))
        return self._info(self._rotate(key, only_from=None))

    def _rotate(self, key: KeyRecord, only_from: int | None) -> KeyRecord:
        """Add a version. With ``only_from``, only if the latest version is still that one:
        racing processes that all saw it run out (or come due) rotate it exactly once, and the
        losers raise ``_NotLatest`` having written nothing."""
        if key.latest_version >= self._max_versions:
            # Checked before generating material (an RSA key takes a while), and again under the
            # row's write lock in ``next_version``, where racing rotations cannot slip past.
            raise self._too_many_versions()

        def next_version(current: KeyRecord) -> KeyRecord:
            self._expect_unchanged(key, current)
            if only_from is not None and current.latest_version != only_from:
                raise _NotLatest()
            if current.latest_version >= self._max_versions:
                raise self._too_many_versions()
            return replace(current, latest_version=current.latest_version + 1)

        return self._store_new_version(
            ALGORITHMS[key.algorithm],
            key.key_id,
            next_version,
            lambda plan: self._repository.rotate_key(key.key_id, plan),
        )

    def rotate_due(
        self,
        now: datetime | None = None,
        on_checked: Callable[[Rotated | None], None] | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> list[Rotated]:
        """Rotate every key whose latest version is older than its ``rotation_period``.

        Each rotation happens under the key row's write lock and only if the latest version is
        still the one found due, so several ``kms rotate-due`` on several nodes at the same
        moment rotate each key exactly once. ``on_checked`` is called once per key with a
        rotation period, with what was rotated or None (progress).
        """
        now = now or utc_now()
        rotated: list[Rotated] = []
        after: str | None = None
        while page := self._repository.keys_with_rotation_period(page_size, after):
            after = page[-1].key.key_id
            for due in page:
                done = self._rotate_if_due(due.key, due.latest_created_at, now)
                if done is not None:
                    rotated.append(done)
                if on_checked is not None:
                    on_checked(done)
        return rotated

    def count_rotating_keys(self) -> int:
        return self._repository.count_keys_with_rotation_period()

    def _rotate_if_due(
        self, key: KeyRecord, latest_created_at: datetime, now: datetime
    ) -> Rotated | None:
        assert key.rotation_period is not None  # noqa: S101 - the query selects only these
        if latest_created_at + timedelta(seconds=key.rotation_period) > now:
            return None
        try:
            new = self._rotate(self._checked_key(key), only_from=key.latest_version)
        except (_NotLatest, KeyChanged, KeyNotFound):
            return None  # another process rotated or recreated it, or it was deleted
        except TooManyVersions:
            log.error("rotate-due: key %r is at kms.maxVersions", key.key_id)
            return None
        return Rotated(new.key_id, new.latest_version)

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
        return self._info(recreated)

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
        key = self._take_encryptions(self._usable_key(key_id, Purpose.ENCRYPT), 1)
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
        self._count_use(key.key_id, parsed.version, 1)
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

    # -- use limits ------------------------------------------------------------------------

    def _encryption_limit(self, key: KeyRecord) -> int:
        limit = key.max_encryptions_per_version or self._default_max_encryptions
        return min(limit, MAX_ENCRYPTIONS_PER_VERSION)

    def _take_encryptions(self, key: KeyRecord, count: int) -> KeyRecord:
        """Count ``count`` encryptions against the key's latest version and return the key row
        whose ``latest_version`` they are to be made under.

        Every encryption (one, a data key, each item of a batch) passes here: it is the one
        place the limit is enforced. From this process's reserved block when it has one left,
        else by reserving a new block in the database; when the version has too few left, it is
        rotated (exactly once however many processes race) and the encryptions are made under
        the new version. No version is used past its limit, even across crashes.
        """
        limit = self._encryption_limit(key)
        if count > limit:
            raise InvalidRequest(
                f"{count} encryptions in one request exceed the key's limit of {limit} per version"
            )
        for _ in range(ENCRYPTION_ATTEMPTS):
            slot = (key.key_id, key.incarnation, key.latest_version, limit)
            if self._budget.take(slot, count):
                return key
            block = max(count, block_size(self._encryption_block, limit))
            granted = self._repository.reserve_encryptions(
                key.key_id, key.latest_version, block, count, limit
            )
            if granted:
                self._budget.add(slot, granted - count)
                return key
            try:
                key = self._rotate(key, only_from=key.latest_version)
            except (_NotLatest, KeyChanged):
                key = self._checked_key(self._repository.get_key(key.key_id))
            limit = self._encryption_limit(key)
        raise KeyChanged()  # retried that often: tell the client to retry

    def _count_use(self, key_id: str, version: int, decryptions: int) -> None:
        self._tally.count(key_id, version, decryptions)
        if self._tally.due():
            self.flush_use()

    def flush_use(self) -> None:
        """Add this process's decryption counts and last uses to the database (at most every
        few seconds, and when the worker stops). A failure keeps them for the next flush."""
        reports = self._tally.drain()
        try:
            self._repository.record_use(reports)
        except Exception:
            self._tally.restore(reports)
            raise

    def use_totals(self) -> list[tuple[str, int, int, int]]:
        """``(key_id, version, encryptions, decryptions)`` of every used version, for metrics."""
        return self._repository.use_totals()

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

    def _info(self, key: KeyRecord, versions: tuple[KeyVersionInfo, ...] = ()) -> KeyInfo:
        next_rotation_at = None
        if key.rotation_period is not None:
            latest = next((v for v in versions if v.version == key.latest_version), None)
            created = (
                latest.created_at
                if latest is not None
                else self._repository.newest_versions(key.key_id, 1)[-1].created_at
            )
            next_rotation_at = created + timedelta(seconds=key.rotation_period)
        return KeyInfo(
            key_id=key.key_id,
            purpose=key.purpose,
            algorithm=key.algorithm,
            version=key.latest_version,
            created_at=key.created_at,
            key_versions=versions,
            rotation_period=None
            if key.rotation_period is None
            else format_rotation_period(key.rotation_period),
            next_rotation_at=next_rotation_at,
            max_encryptions_per_version=self._encryption_limit(key)
            if key.purpose == Purpose.ENCRYPT.value
            else None,
        )

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
        if record.public_key is None:  # only signing keys have one
            raise KeyNotFound()
        self._load_public(key, record)  # refuse one that does not fit the algorithm
        return record.public_key

    def _load_public(self, key: KeyRecord, record: KeyVersionRecord) -> Any:
        if record.public_key is None:
            raise KeyNotFound()
        try:
            return SIGNING_ALGORITHMS[key.algorithm].load_public(record.public_key)
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

    def rekey(
        self,
        new_keyring: Keyring,
        kdf_parameters: bytes,
        init_marker: bytes,
        *,
        after_version: Callable[[], None] | None = None,
    ) -> tuple[int, int]:
        """Re-wrap every version under ``new_keyring`` and re-MAC every row (``kms rekey``).

        Every row is verified under the current keyring first (a row changed behind kms's back
        is not laundered into a valid MAC under the new key) and every wrapped key is unwrapped
        under its own identity. All of it, with the new KDF parameters and init marker (made by
        ``new_keyring``), is written in one transaction: stopped at any point, nothing changed.
        ``after_version`` is called after each version (progress; a test stops there).
        Returns the number of key rows and version rows.
        """

        def seal_key(key: KeyRecord) -> bytes:
            self._verify_key(key)
            return new_keyring.tag(encode_key_row(replace(key, mac=None)))

        def rewrap_version(key: KeyRecord, record: KeyVersionRecord) -> tuple[bytes, bytes]:
            self._verify_version(key, record)
            identity = KeyIdentity(
                key.key_id, record.version, key.purpose, key.algorithm, key.incarnation
            )
            try:
                secret = self._keyring.unwrap(record.wrapped_key, identity)
            except UnwrapFailed:
                raise IntegrityFailure(
                    f"key {key.key_id!r}: version {record.version}: the wrapped key does not unwrap"
                ) from None
            try:
                wrapped_key = new_keyring.wrap(secret, identity.aad())
            finally:
                zeroise(secret)
            mac = new_keyring.tag(
                encode_version_row(key, record.version, wrapped_key, record.public_key)
            )
            if after_version is not None:
                after_version()
            return wrapped_key, mac

        return self._repository.rewrap_all(seal_key, rewrap_version, kdf_parameters, init_marker)

    def count_versions(self) -> int:
        return self._repository.count_versions()

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
