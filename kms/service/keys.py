"""KMSService: key lifecycle and the crypto operations, over a repository and a keyring."""

from __future__ import annotations

import json
import logging
import re
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

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
    DeletionNotAllowed,
    IntegrityFailure,
    InvalidCiphertext,
    InvalidRequest,
    InvalidSignature,
    KeyChanged,
    KeyDisabled,
    KeyNotFound,
    KeyPendingDeletion,
    KeyStateConflict,
    KMSError,
    PurposeMismatch,
    StoreUnavailable,
    TooManyVersions,
    UnwrapFailed,
    VersionBelowMinimum,
)
from kms.service.cache import KeyMaterialCache, KeyRowCache
from kms.service.integrity import encode_key_row, encode_version_row
from kms.service.keyring import Keyring, zeroise
from kms.service.keystore import INIT_MARKER_AAD
from kms.service.usage import EncryptionBudget, UseTally, block_size
from kms.settings import (
    DEFAULT_ENCRYPTION_BLOCK,
    DEFAULT_MAX_BATCH_ITEMS,
    DEFAULT_MAX_ENCRYPTIONS_PER_VERSION,
    DEFAULT_MAX_VERSIONS,
    DEFAULT_VERIFY_MAX_VERSIONS,
)
from kms.store.records import (
    PENDING_DELETION,
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
lifecycle_log = logging.getLogger("kms.lifecycle")

KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_PAGE_SIZE = 1000
#: GET /v1/kms/keys/{key_id} lists at most this many of the newest versions; /versions pages.
KEY_DETAIL_VERSIONS = 100
ENABLED = "enabled"
#: POST /v1/kms/random returns at most this many bytes per call.
MAX_RANDOM_BYTES = 1024
DISABLED = "disabled"
STATES = (ENABLED, DISABLED, PENDING_DELETION)
MAX_DESCRIPTION_CHARS = 256
MAX_LABELS = 32
MAX_LABEL_VALUE_CHARS = 256
LABEL_NAME_PATTERN = re.compile(r"[a-z0-9_.-]{1,63}")
MAX_PENDING_DAYS = 30
#: Key rows whose MAC was verified, kept whole (MAC included) so only an identical row hits.
VERIFIED_ROWS_CACHE_SIZE = 1024
#: Version rows read with their key row and not yet used (``KMSService._read_row``): at most this
#: many before they are dropped (a few hundred bytes each; an RSA key's, a few KB).
PREFETCHED_VERSIONS_LIMIT = 1024
#: The sizes of data key ``generate_data_key`` makes: AES-128, -192 and -256.
DATA_KEY_SIZES = (16, 24, 32)
#: The algorithm of a result whose key is not known (a client's result rebuilt from an answer).
UNKNOWN_ALGORITHM = "unknown"

#: One item of a batch: the single call's keyword arguments but key_id, or the error its
#: parsing raised (kept as that item's result).
BatchItem = Mapping[str, Any] | KMSError


@dataclass(frozen=True)
class Requester:
    """Who is asking, and for which operation, as the API's policy names them.

    The API layer sets ``CURRENT_REQUESTER`` around each request; the service reads it only to
    record who still tries to use a key pending deletion. It never decides anything by it.
    """

    caller: str
    operation: str


CURRENT_REQUESTER: ContextVar[Requester | None] = ContextVar("kms_requester", default=None)


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
    state: str = ENABLED
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    min_decryption_version: int = 1
    min_available_version: int = 1
    deletion_allowed: bool = True
    pending_deletion_at: datetime | None = None
    use_attempts_while_pending: int = 0
    last_use_attempt: dict[str, str] | None = None
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
    #: The key's algorithm, for the metrics; not part of any answer (and "unknown" where a
    #: client rebuilds a result from an answer).
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)


@dataclass(frozen=True)
class Decrypted:
    key_id: str
    version: int
    plaintext: bytes
    #: The key's algorithm, for the metrics; not part of any answer (and "unknown" where a
    #: client rebuilds a result from an answer).
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)

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
    #: The key's algorithm, for the metrics; not part of any answer (and "unknown" where a
    #: client rebuilds a result from an answer).
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, version={self.version})"


@dataclass(frozen=True)
class Signed:
    key_id: str
    version: int
    signature: bytes
    #: The key's algorithm, for the metrics; not part of any answer (and "unknown" where a
    #: client rebuilds a result from an answer).
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)


@dataclass(frozen=True)
class MACed:
    key_id: str
    version: int
    mac: bytes
    #: The key's algorithm, for the metrics; not part of any answer (and "unknown" where a
    #: client rebuilds a result from an answer).
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)


@dataclass(frozen=True)
class Verified:
    key_id: str
    valid: bool
    version: int | None
    #: The key's algorithm, for the metrics; not part of any answer (and "unknown" where a
    #: client rebuilds a result from an answer).
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)


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


def validate_description(description: str) -> str:
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidRequest(
            f"description must be a string of at most {MAX_DESCRIPTION_CHARS} characters"
        )
    return description


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    if not isinstance(labels, dict):
        raise InvalidRequest("labels must be an object of string pairs")
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"labels: at most {MAX_LABELS} labels")
    for name, value in labels.items():
        if not isinstance(name, str) or LABEL_NAME_PATTERN.fullmatch(name) is None:
            raise InvalidRequest("labels: names must be 1-63 characters of a-z 0-9 _ . -")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_CHARS:
            raise InvalidRequest(
                f"labels: values must be strings of at most {MAX_LABEL_VALUE_CHARS} characters"
            )
    return labels


def encode_labels(labels: dict[str, str]) -> str:
    """The stored (and MAC'd) form of labels: canonical JSON, so equal labels store alike."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_label_filter(label: str) -> tuple[str, str]:
    """``name:value`` from ``GET /v1/kms/keys?label=``; the value may itself hold colons."""
    name, colon, value = label.partition(":")
    if not colon or LABEL_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidRequest("label must be name:value with a valid label name")
    return name, value


def _version_info(summary: KeyVersionSummary) -> KeyVersionInfo:
    return KeyVersionInfo(
        version=summary.version,
        created_at=summary.created_at,
        encryptions=summary.encryptions,
        decryptions=summary.decryptions,
        last_used_at=summary.last_used_at,
    )


def _last_use_attempt(stored: str | None) -> dict[str, str] | None:
    # Bookkeeping outside the MAC: shown as stored if it has the expected shape, else dropped.
    if stored is None:
        return None
    try:
        attempt = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(attempt, dict) or set(attempt) != {"at", "caller", "operation"}:
        return None
    return {name: str(value) for name, value in attempt.items()}


class _NotDue(Exception):
    """A key listed as due is no longer pending, or not yet due, once its row is locked."""


class _StaleRow(Exception):
    """A version row did not match the key row it was read for, and the key row has changed
    since (recreated, trimmed): the operation is tried again on the row as it is now."""


T = TypeVar("T")
#: What an operation on a cached key row may fail with only because the row was stale: a
#: ciphertext or signature of a version (or incarnation) the cached row does not know, or a
#: version the cached row still names but the database no longer holds.
_STALE_SYMPTOMS = (_StaleRow, KeyNotFound, InvalidCiphertext, VersionBelowMinimum, KeyChanged)


def _material_bytes(algorithm: str, *, public: bool = False) -> int:
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
        min_pending_days: int = 0,
        clock: Callable[[], datetime] = utc_now,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
        max_encryptions_per_version: int = DEFAULT_MAX_ENCRYPTIONS_PER_VERSION,
        encryption_block: int = DEFAULT_ENCRYPTION_BLOCK,
        rows: KeyRowCache | None = None,
    ) -> None:
        """``after_generation`` is a test hook: called with the key_id once fresh material is
        generated and before the write transaction starts, so a test can change the key in that
        window deterministically. Production code never passes it. ``clock`` gives "now" for
        scheduled deletion (tests move it instead of sleeping); ``min_pending_days`` is
        ``kms.deletion.min_pending_days``. ``rows`` caches key rows for the cryptographic
        operations (``kms.cacheStalenessMs``); without it every operation reads the row."""
        self._repository = repository
        self._rows = KeyRowCache(0, lambda _key_id: 0) if rows is None else rows
        self._keyring = keyring
        self._cache = cache
        self._after_generation = after_generation
        # Encoding and MAC-checking a row costs about 10 us, a hit here about 2.5 us, on a hot
        # path (encrypt on a cached key) of about 190 us (README, Production deployment).
        self._verified_rows = KeyMaterialCache(VERIFIED_ROWS_CACHE_SIZE)
        # Latest version rows read in one statement with their key row (``_read_row``), for the
        # operation that follows on a key this worker has not loaded yet; keyed by the key row's
        # MAC, so a version is only ever taken with the very key row it was read with.
        self._prefetched: dict[tuple[str, bytes | None, int], KeyVersionRecord] = {}
        self._verify_max_versions = verify_max_versions
        self._max_versions = max_versions
        self._min_pending_days = min_pending_days
        self._clock = clock
        self._max_batch_items = max_batch_items
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
        description: str = "",
        labels: dict[str, str] | None = None,
        *,
        min_decryption_version: int = 1,
        deletion_allowed: bool = True,
        rotation_period: str | None = None,
        max_encryptions_per_version: int | None = None,
    ) -> KeyInfo:
        key_id = str(uuid.uuid4()) if key_id is None else validate_key_id(key_id)
        validate_description(description)
        # A new key has one version: the only minimum it can have is 1.
        if isinstance(min_decryption_version, bool) or min_decryption_version != 1:
            raise InvalidRequest("min_decryption_version of a new key must be 1 (its only version)")
        if not isinstance(deletion_allowed, bool):
            raise InvalidRequest("deletion_allowed must be true or false")
        stored_labels = encode_labels(validate_labels({} if labels is None else labels))
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
            description=description,
            labels=stored_labels,
            deletion_allowed=deletion_allowed,
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
        self._rows.drop(key_id)
        return self._info(created)

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

    def list_keys(
        self,
        limit: int = 100,
        after: str | None = None,
        state: str | None = None,
        label: str | None = None,
    ) -> list[KeyInfo]:
        """Up to ``limit`` keys after ``after`` in key_id order, in ``state`` and carrying the
        label ``name:value`` if given.

        The state is filtered in SQL; the label on the authenticated row, page by page, so a
        label filter reads every key up to the page's last match.
        """
        _check_limit(limit)
        if after is not None:
            validate_key_id(after)
        if state is not None and state not in STATES:
            raise InvalidRequest(f"state must be one of: {', '.join(STATES)}")
        wanted = None if label is None else parse_label_filter(label)
        found: list[KeyInfo] = []
        while len(found) < limit:
            batch = limit if wanted is None else MAX_PAGE_SIZE
            page = self._repository.list_keys(batch, after, state)
            for key in page:
                checked = self._checked_key(key)
                if wanted is None or json.loads(checked.labels).get(wanted[0]) == wanted[1]:
                    found.append(self._info(checked))
                    if len(found) == limit:
                        break
            if len(page) < batch:
                break
            after = page[-1].key_id
        return found

    def delete_key(self, key_id: str, pending_days: int | None = None) -> KeyInfo | None:
        """Destroy a key now (``pending_days`` None), or schedule its destruction.

        Scheduling puts the key in ``pending_deletion`` at once, due ``pending_days`` (1-30) days
        from now; the returned key says when. Refused (409, nothing destroyed) when the key's
        ``deletion_allowed`` is false, when it is already pending, or when
        ``kms.deletion.min_pending_days`` asks for a longer window.
        """
        validate_key_id(key_id)
        if pending_days is not None and (
            isinstance(pending_days, bool)
            or not isinstance(pending_days, int)
            or not 1 <= pending_days <= MAX_PENDING_DAYS
        ):
            raise InvalidRequest(f"pending_days must be an integer from 1 to {MAX_PENDING_DAYS}")
        if self._min_pending_days > 0 and (
            pending_days is None or pending_days < self._min_pending_days
        ):
            raise KeyStateConflict(
                f"deletion needs a waiting period of at least {self._min_pending_days} days "
                "(kms.deletion.min_pending_days): DELETE with ?pending_days=N"
            )

        def deletable(current: KeyRecord) -> None:
            self._checked_key(current)
            if current.state == PENDING_DELETION:
                raise KeyPendingDeletion()
            if not current.deletion_allowed:
                raise DeletionNotAllowed()

        if pending_days is None:
            self._repository.destroy_key(key_id, deletable)
            self._rows.drop(key_id)
            self._forget_material(key_id)
            lifecycle_log.info("key %r destroyed", key_id)
            return None

        def schedule(current: KeyRecord) -> KeyRecord:
            deletable(current)
            return replace(
                current,
                state=PENDING_DELETION,
                pending_deletion_at=self._clock() + timedelta(days=pending_days),
                use_attempts_while_pending=0,
                last_use_attempt=None,
            )

        scheduled = self._update(key_id, schedule)
        lifecycle_log.info(
            "key %r scheduled for deletion at %s", key_id, scheduled.pending_deletion_at
        )
        return self._info(scheduled)

    def cancel_deletion(self, key_id: str) -> KeyInfo:
        """Take a key out of ``pending_deletion``; it comes back ``disabled`` (as in AWS KMS), so
        that it is enabled again deliberately. The use-attempt bookkeeping is kept."""

        def cancel(current: KeyRecord) -> KeyRecord:
            self._checked_key(current)
            if current.state != PENDING_DELETION:
                raise KeyStateConflict("key is not pending deletion")
            return replace(current, state=DISABLED, pending_deletion_at=None)

        return self._info(self._update(key_id, cancel))

    def disable_key(self, key_id: str) -> KeyInfo:
        """Refuse every cryptographic operation with the key until it is enabled; its material,
        metadata and versions stay, and it can still be read and rotated."""
        return self._info(self._update(key_id, self._set_state(DISABLED)))

    def enable_key(self, key_id: str) -> KeyInfo:
        return self._info(self._update(key_id, self._set_state(ENABLED)))

    def _set_state(self, state: str) -> Callable[[KeyRecord], KeyRecord]:
        def change(current: KeyRecord) -> KeyRecord:
            self._checked_key(current)
            if current.state == PENDING_DELETION:
                raise KeyPendingDeletion()
            return replace(current, state=state)

        return change

    def update_key(
        self,
        key_id: str,
        *,
        description: str | None = None,
        labels: dict[str, str] | None = None,
        min_decryption_version: int | None = None,
        deletion_allowed: bool | None = None,
        rotation_period: str | None | object = ...,
        max_encryptions_per_version: int | None | object = ...,
    ) -> KeyInfo:
        """Change metadata, version policy and rotation settings (``PATCH``), all or nothing:
        every argument is validated, and the change made under the row lock, before anything
        is written; refused (409) while the key is pending deletion.

        For ``description``, ``labels``, ``min_decryption_version`` and ``deletion_allowed``
        None leaves the field as it is; ``labels`` replaces the key's labels as a whole, and
        ``min_decryption_version`` may range from the oldest version still stored
        (``min_available_version``) to the latest version. ``rotation_period`` and
        ``max_encryptions_per_version`` left out (``...``) stay as they are, and None clears
        them (no rotation by time; the configured limit).
        """
        if description is not None:
            validate_description(description)
        stored_labels = None if labels is None else encode_labels(validate_labels(labels))
        if min_decryption_version is not None and (
            isinstance(min_decryption_version, bool) or not isinstance(min_decryption_version, int)
        ):
            raise InvalidRequest("min_decryption_version must be an integer")
        if deletion_allowed is not None and not isinstance(deletion_allowed, bool):
            raise InvalidRequest("deletion_allowed must be true or false")
        rotation: dict[str, int | None] = {}
        if rotation_period is not ...:
            rotation["rotation_period"] = (
                None if rotation_period is None else parse_rotation_period(rotation_period)
            )
        if max_encryptions_per_version is not ...:
            rotation["max_encryptions_per_version"] = (
                None
                if max_encryptions_per_version is None
                else validate_max_encryptions(max_encryptions_per_version)
            )

        def change(current: KeyRecord) -> KeyRecord:
            self._checked_key(current)
            if current.state == PENDING_DELETION:
                raise KeyPendingDeletion()
            updated = current
            if description is not None:
                updated = replace(updated, description=description)
            if stored_labels is not None:
                updated = replace(updated, labels=stored_labels)
            if min_decryption_version is not None:
                low, high = current.min_available_version, current.latest_version
                if not low <= min_decryption_version <= high:
                    raise InvalidRequest(
                        f"min_decryption_version must be from {low} (the oldest version kept) "
                        f"to {high} (the latest version)"
                    )
                updated = replace(updated, min_decryption_version=min_decryption_version)
            if deletion_allowed is not None:
                updated = replace(updated, deletion_allowed=deletion_allowed)
            return replace(updated, **rotation)

        return self._info(self._update(key_id, change))

    def trim_key(self, key_id: str, min_available_version: int) -> KeyInfo:
        """Destroy every version below ``min_available_version``, for good.

        Only versions already fenced off may go: ``min_available_version`` must not exceed
        ``min_decryption_version`` (409 otherwise), so a trim never breaks a ciphertext that still
        decrypts. The row keeps the new lower bound under its MAC: a destroyed version restored
        into the database from a backup is refused.
        """
        if (
            isinstance(min_available_version, bool)
            or not isinstance(min_available_version, int)
            or min_available_version < 1
        ):
            raise InvalidRequest("min_available_version must be a positive integer")

        def trim(current: KeyRecord) -> KeyChange:
            self._checked_key(current)
            if current.state == PENDING_DELETION:
                raise KeyPendingDeletion()
            if min_available_version > current.min_decryption_version:
                raise KeyStateConflict(
                    "min_available_version must not exceed min_decryption_version "
                    f"({current.min_decryption_version}); raise that first"
                )
            if min_available_version <= current.min_available_version:
                return KeyChange(key=current)  # already trimmed that far: nothing to destroy
            trimmed = self._sealed(replace(current, min_available_version=min_available_version))
            return KeyChange(key=trimmed, delete_versions_below=min_available_version)

        key = self._repository.update_key(validate_key_id(key_id), trim)
        self._rows.drop(key_id)
        self._forget_material(key_id)
        return self._info(key)

    def destroy_due(
        self,
        now: datetime | None = None,
        on_destroyed: Callable[[KeyInfo], None] | None = None,
        on_failure: Callable[[str, KMSError], None] | None = None,
    ) -> list[str]:
        """Destroy every key whose deletion window has passed by ``now`` (default: the clock).

        Idempotent, and safe when several processes run it at once: each key is re-checked
        (MAC, state, deadline) under its row's write lock, and a key another process destroyed
        first is skipped, so each is destroyed exactly once. A row that fails its check is
        reported to ``on_failure`` and left alone. Returns the key_ids this call destroyed.
        """
        now = self._clock() if now is None else now
        destroyed: list[str] = []
        after: str | None = None

        def due(current: KeyRecord) -> None:
            self._checked_key(current)
            if (
                current.state != PENDING_DELETION
                or current.pending_deletion_at is None
                or current.pending_deletion_at > now
                or not current.deletion_allowed
            ):
                raise _NotDue()

        while page := self._repository.due_keys(now, MAX_PAGE_SIZE, after):
            after = page[-1]
            for key_id in page:
                try:
                    gone = self._repository.destroy_key(key_id, due)
                except (KeyNotFound, _NotDue):
                    continue  # destroyed by another process, or cancelled meanwhile
                except KMSError as error:
                    if on_failure is None:
                        raise
                    on_failure(key_id, error)
                    continue
                self._rows.drop(key_id)
                self._forget_material(key_id)
                destroyed.append(key_id)
                lifecycle_log.info("key %r destroyed: its deletion window ended", key_id)
                if on_destroyed is not None:
                    on_destroyed(self._info(gone))
        return destroyed

    def _update(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        """Change a key row (no new version) under its write lock, sealing the result."""
        try:
            return self._repository.update_key(
                validate_key_id(key_id),
                lambda current: KeyChange(key=self._sealed(change(current))),
            )
        finally:
            self._rows.drop(key_id)

    def rotate_key(self, key_id: str) -> KeyInfo:
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))
        if key.state == PENDING_DELETION:
            raise KeyPendingDeletion()
        return self._info(self._rotate(key, only_from=None))

    def _rotate(self, key: KeyRecord, only_from: int | None) -> KeyRecord:
        """Add a version. With ``only_from``, only if the latest version is still that one:
        racing processes that all saw it run out (or come due) rotate it exactly once, and the
        losers raise ``_NotLatest`` having written nothing. Refused while pending deletion,
        checked again under the row lock."""
        if key.latest_version >= self._max_versions:
            # Checked before generating material (an RSA key takes a while), and again under the
            # row's write lock in ``next_version``, where racing rotations cannot slip past.
            raise self._too_many_versions()

        def next_version(current: KeyRecord) -> KeyRecord:
            self._expect_unchanged(key, current)
            if current.state == PENDING_DELETION:
                raise KeyPendingDeletion()
            if only_from is not None and current.latest_version != only_from:
                raise _NotLatest()
            if current.latest_version >= self._max_versions:
                raise self._too_many_versions()
            return replace(current, latest_version=current.latest_version + 1)

        try:
            return self._store_new_version(
                ALGORITHMS[key.algorithm],
                key.key_id,
                next_version,
                lambda plan: self._repository.rotate_key(key.key_id, plan),
            )
        finally:
            self._rows.drop(key.key_id)

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
        """Wipe every version and issue version 1 with fresh material; state and metadata stay.

        It destroys material like a DELETE, so it is refused (409) when the key's
        ``deletion_allowed`` is false, while it is pending deletion, and whenever
        ``kms.deletion.min_pending_days`` makes a waiting period mandatory.
        """
        key = self._checked_key(self._repository.get_key(validate_key_id(key_id)))

        def recreatable(current: KeyRecord) -> None:
            if current.state == PENDING_DELETION:
                raise KeyPendingDeletion()
            if not current.deletion_allowed:
                raise DeletionNotAllowed()
            if self._min_pending_days > 0:
                raise KeyStateConflict(
                    "recreate destroys every version, and kms.deletion.min_pending_days requires "
                    "a waiting period before material is destroyed: use a new key instead"
                )

        recreatable(key)  # before generating material; again under the lock below

        def fresh_incarnation(current: KeyRecord) -> KeyRecord:
            self._expect_unchanged(key, current)
            recreatable(current)
            return replace(
                current,
                latest_version=1,
                incarnation=secrets.token_hex(16),
                created_at=utc_now(),
                min_decryption_version=1,
                min_available_version=1,
            )

        recreated = self._store_new_version(
            ALGORITHMS[key.algorithm],
            key_id,
            fresh_incarnation,
            lambda plan: self._repository.recreate_key(key_id, plan),
            replace_versions=True,
        )
        self._rows.drop(key_id)
        self._forget_material(key_id)
        return self._info(recreated)

    def public_key(self, key_id: str, version: int | None = None) -> PublicKeyInfo:
        """The public half of a signing key or an RSA-OAEP encryption key. Handing it out is a
        use of the key (whoever fetches it means to verify or encrypt with it): refused while
        disabled or pending deletion, and below ``min_decryption_version``."""
        key = self._usable_key(key_id, None)
        if key.algorithm not in PUBLIC_KEY_ALGORITHMS:
            raise PurposeMismatch(f"key {key.key_id} ({key.algorithm}) has no public key")
        version = key.latest_version if version is None else version
        if version < key.min_decryption_version:
            raise VersionBelowMinimum()
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
        def run(key: KeyRecord) -> Encrypted:
            key = self._encrypting(key, 1)
            return self._encrypt(key, _Material(self, key), plaintext, context)

        return self._on_key(key_id, Purpose.ENCRYPT, run)

    def encrypt_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Encrypted | KMSError]:
        return self._batch(key_id, Purpose.ENCRYPT, items, self._encrypt, encrypting=True)

    def decrypt(
        self,
        key_id: str,
        ciphertext: str,
        context: Mapping[str, str] | None = None,
        version: int | None = None,
    ) -> Decrypted:
        """Decrypt a ``vN:`` ciphertext, or (RSA-OAEP keys only) a raw OAEP ciphertext made
        offline with the exported public key of ``version``. Counted in the version's
        decryptions (flushed every few seconds)."""
        return self._on_key(
            key_id,
            Purpose.ENCRYPT,
            lambda key: self._decrypt(key, _Material(self, key), ciphertext, context, version),
        )

    def decrypt_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Decrypted | KMSError]:
        return self._batch(key_id, Purpose.ENCRYPT, items, self._decrypt)

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

        def run(key: KeyRecord) -> DataKey:
            key = self._encrypting(key, 1)
            return self._data_key(key, _Material(self, key), key_bytes, context, include_plaintext)

        return self._on_key(key_id, Purpose.ENCRYPT, run)

    def generate_data_key_batch(
        self, key_id: str, items: Sequence[BatchItem]
    ) -> list[DataKey | KMSError]:
        return self._batch(key_id, Purpose.ENCRYPT, items, self._data_key, encrypting=True)

    def rewrap(
        self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
    ) -> Encrypted:
        """Decrypt and encrypt again under the latest version, with the same context.

        The plaintext never leaves the service: this is how ciphertexts move forward after a
        rotation. A ciphertext that does not decrypt (wrong context, tampered) is
        ``InvalidCiphertext``, as for ``decrypt``.
        """

        def run(key: KeyRecord) -> Encrypted:
            key = self._encrypting(key, 1)
            return self._rewrap(key, _Material(self, key), ciphertext, context)

        return self._on_key(key_id, Purpose.ENCRYPT, run)

    def rewrap_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Encrypted | KMSError]:
        return self._batch(key_id, Purpose.ENCRYPT, items, self._rewrap, encrypting=True)

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
        return self._on_key(
            key_id,
            Purpose.SIGN,
            lambda key: self._sign(
                key,
                _Material(self, key),
                message,
                signing_algorithm,
                prehashed=prehashed,
                digest_algorithm=digest_algorithm,
            ),
        )

    def sign_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Signed | KMSError]:
        return self._batch(key_id, Purpose.SIGN, items, self._sign)

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
        return self._on_key(
            key_id,
            Purpose.SIGN,
            lambda key: self._verify(
                key,
                _Material(self, key),
                message,
                signature,
                signing_algorithm,
                prehashed=prehashed,
                digest_algorithm=digest_algorithm,
                version=version,
            ),
            failed=_stale_result,
        )

    def verify_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Verified | KMSError]:
        return self._batch(key_id, Purpose.SIGN, items, self._verify)

    # -- the key row of an operation, cached ----------------------------------------------

    def _on_key(
        self,
        key_id: str,
        purpose: Purpose,
        operation: Callable[[KeyRecord], T],
        failed: Callable[[T], bool] | None = None,
        again: Callable[[KeyRecord, T], T] | None = None,
    ) -> T:
        """``operation`` on the key's row: the cached row if there is one still valid
        (``KeyRowCache``), else the row read now.

        A cached row may be up to ``kms.cacheStalenessMs`` old. Encrypting or signing under it
        is safe (an older latest version still decrypts and verifies everywhere); failing is
        not: when ``operation`` fails the way a stale row would make it fail (a version the row
        does not know yet, a version row of another incarnation, or a result ``failed`` calls a
        failure), the row is read again and, if it changed, the operation is done once more
        on the new row (``again``, given the first result, redoes only what failed). So a
        client never sees "invalid" only because this worker had not yet seen a change.
        """
        key, cached = self._hot_key(validate_key_id(key_id), purpose)
        try:
            result = operation(key)
        except _STALE_SYMPTOMS as error:
            if not (cached or isinstance(error, _StaleRow)):
                raise
            fresh = self._changed_row(key, purpose)
            if fresh is None:
                if isinstance(error, _StaleRow):
                    raise KeyChanged() from None
                raise
            return self._once_more(operation, fresh)
        if cached and failed is not None and failed(result):
            fresh = self._changed_row(key, purpose)
            if fresh is not None:
                if again is None:
                    return self._once_more(operation, fresh)
                return self._once_more(lambda current: again(current, result), fresh)
        return result

    @staticmethod
    def _once_more(operation: Callable[[KeyRecord], T], key: KeyRecord) -> T:
        try:
            return operation(key)
        except _StaleRow:  # changed again meanwhile: the client retries
            raise KeyChanged() from None

    def _batch(
        self,
        key_id: str,
        purpose: Purpose,
        items: Sequence[BatchItem],
        one: Callable[..., Any],
        *,
        encrypting: bool = False,
    ) -> list[Any]:
        """A batch on one key row: ``one(key, material, **item)`` per item (see ``_each``);
        items that failed as a stale row would make them fail are redone on the new row."""
        self.check_batch_size(len(items))

        def run(key: KeyRecord, subset: Sequence[BatchItem]) -> list[Any]:
            if encrypting:
                key = self._encrypting(key, len(subset))
            material = _Material(self, key)
            return _each(subset, lambda item: one(key, material, **item))

        def failed(results: list[Any]) -> bool:
            return any(_stale_result(result) for result in results)

        def again(fresh: KeyRecord, results: list[Any]) -> list[Any]:
            redo = [index for index, result in enumerate(results) if _stale_result(result)]
            merged = list(results)
            for index, result in zip(redo, run(fresh, [items[i] for i in redo]), strict=True):
                merged[index] = result
            return merged

        return self._on_key(key_id, purpose, lambda key: run(key, items), failed, again)

    def _hot_key(self, key_id: str, purpose: Purpose | None) -> tuple[KeyRecord, bool]:
        """The usable key row, from the row cache if it has it: (row, whether cached)."""
        key = self._rows.get(key_id)
        if key is not None:
            return self._usable(key, purpose), True
        return self._usable(self._read_row(key_id), purpose), False

    def _read_row(self, key_id: str) -> KeyRecord:
        """The key row from the database, checked, and cached for the operations.

        The change counter is read first and the clock before the read: a write committed
        after either moved the counter, and the age never understates.
        """
        mark = self._rows.mark(key_id)
        read_at = self._rows.now()
        key, latest = self._repository.get_key_and_latest_version(key_id)
        key = self._checked_key(key)
        if latest is not None and not self._cache.holds(
            self._secret_cache_key(key, latest.version)
        ):
            if len(self._prefetched) >= PREFETCHED_VERSIONS_LIMIT:
                self._prefetched.clear()  # left by operations that used another version
            self._prefetched[(key.key_id, key.mac, latest.version)] = latest
        self._rows.put(key, mark, read_at)
        return key

    def _changed_row(self, key: KeyRecord, purpose: Purpose | None) -> KeyRecord | None:
        """The key row read again, usable; None when it is the row ``key`` already was (its
        MAC covers every field the operations use)."""
        self._rows.drop(key.key_id)
        fresh = self._read_row(key.key_id)
        if fresh.mac == key.mac:
            return None
        return self._usable(fresh, purpose)

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
        return Encrypted(
            key_id=key.key_id,
            version=key.latest_version,
            ciphertext=ciphertext,
            algorithm=key.algorithm,
        )

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
            self._count_use(key.key_id, parsed.version, 1)
            return Decrypted(
                key_id=key.key_id,
                version=parsed.version,
                plaintext=plaintext,
                algorithm=key.algorithm,
            )
        self._refuse_context(key, context)
        if version is None:
            version, sealed = parse_versioned(ciphertext)
        else:
            sealed = parse_raw(ciphertext)
        private_key = self._secret_for_ciphertext(key, material, version)
        plaintext = oaep.decrypt(private_key, sealed)
        self._count_use(key.key_id, version, 1)
        return Decrypted(
            key_id=key.key_id, version=version, plaintext=plaintext, algorithm=key.algorithm
        )

    @staticmethod
    def _secret_for_ciphertext(key: KeyRecord, material: _Material, version: int) -> Any:
        """The secret a ciphertext names; a version that does not exist is a bad ciphertext."""
        if not 1 <= version <= key.latest_version:
            raise InvalidCiphertext()
        if version < key.min_decryption_version:
            raise VersionBelowMinimum()
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
            algorithm=key.algorithm,
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
            algorithm=key.algorithm,
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

        def signed_by(candidate: int) -> bool:
            try:
                public_key = material.public(candidate)
            except KeyNotFound:
                return False
            try:
                spec.verify(public_key, message, signature, scheme, prehashed=prehashed)
            except InvalidSignature:
                return False
            return True

        return self._verified_by_some_version(key, version, signed_by)

    def mac(self, key_id: str, message: bytes) -> MACed:
        def run(key: KeyRecord) -> MACed:
            secret = self._secret(key, key.latest_version)
            return MACed(
                key_id=key.key_id,
                version=key.latest_version,
                mac=secret.mac(message),
                algorithm=key.algorithm,
            )

        return self._on_key(key_id, Purpose.MAC, run)

    def verify_mac(
        self, key_id: str, message: bytes, mac: bytes, version: int | None = None
    ) -> Verified:
        """Check a MAC against ``version`` only, or the newest ``verify_max_versions`` versions.

        Each comparison is constant time; unlike ``verify``, every version tried unwraps (once,
        then cached) its secret key, since a MAC key has no public half.
        """

        def run(key: KeyRecord) -> Verified:
            def made_by(candidate: int) -> bool:
                try:
                    secret = self._secret(key, candidate)
                except KeyNotFound:
                    return False
                try:
                    secret.verify(message, mac)
                except InvalidSignature:
                    return False
                return True

            return self._verified_by_some_version(key, version, made_by)

        return self._on_key(key_id, Purpose.MAC, run, failed=_stale_result)

    def _verified_by_some_version(
        self, key: KeyRecord, version: int | None, made_by: Callable[[int], bool]
    ) -> Verified:
        """Which version made a signature or MAC: ``version`` only, or else the window.

        The window is the newest ``verify_max_versions`` versions still stored. Versions in it
        below ``min_decryption_version`` are fenced: tried last, and only to answer 409 rather
        than "invalid" for a signature they made; no version below the window is ever tried. A
        named ``version`` below ``min_decryption_version`` is 409 at once.
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

    @staticmethod
    def random_bytes(count: int) -> bytes:
        """``count`` bytes (1..MAX_RANDOM_BYTES) from the operating system's CSPRNG."""
        if isinstance(count, bool) or not isinstance(count, int):
            raise InvalidRequest("bytes must be an integer")
        if not 1 <= count <= MAX_RANDOM_BYTES:
            raise InvalidRequest(f"bytes must be between 1 and {MAX_RANDOM_BYTES}")
        return secrets.token_bytes(count)

    # -- use limits ------------------------------------------------------------------------

    def _encryption_limit(self, key: KeyRecord) -> int:
        limit = key.max_encryptions_per_version or self._default_max_encryptions
        return min(limit, MAX_ENCRYPTIONS_PER_VERSION)

    def _encrypting(self, key: KeyRecord, count: int) -> KeyRecord:
        """The key row ``count`` encryptions are to be made under, counted against its limit.

        Use limits are for AEAD keys only: they exist because random 96-bit nonces may repeat
        after about 2**32 encryptions, and RSA-OAEP has no nonce to reuse. A batch counts every
        item, a failing one too: a version is never used past its limit, at worst a little
        before it.
        """
        if key.algorithm in RSA_ENCRYPTION_ALGORITHMS:
            return key
        return self._take_encryptions(key, count)

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
                key = self._read_row(key.key_id)
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

    def _info(self, key: KeyRecord, versions: tuple[KeyVersionInfo, ...] = ()) -> KeyInfo:
        next_rotation_at = None
        if key.rotation_period is not None:
            latest = next((v for v in versions if v.version == key.latest_version), None)
            if latest is None:
                newest = self._repository.newest_versions(key.key_id, 1)
                latest = _version_info(newest[-1]) if newest else None  # none: just destroyed
            if latest is not None:
                next_rotation_at = latest.created_at + timedelta(seconds=key.rotation_period)
        return KeyInfo(
            key_id=key.key_id,
            purpose=key.purpose,
            algorithm=key.algorithm,
            version=key.latest_version,
            created_at=key.created_at,
            state=key.state,
            description=key.description,
            labels=json.loads(key.labels),
            min_decryption_version=key.min_decryption_version,
            min_available_version=key.min_available_version,
            deletion_allowed=key.deletion_allowed,
            pending_deletion_at=key.pending_deletion_at,
            use_attempts_while_pending=key.use_attempts_while_pending,
            last_use_attempt=_last_use_attempt(key.last_use_attempt),
            key_versions=versions,
            rotation_period=None
            if key.rotation_period is None
            else format_rotation_period(key.rotation_period),
            next_rotation_at=next_rotation_at,
            # Use limits apply to AEAD keys only (see ``encrypt``).
            max_encryptions_per_version=self._encryption_limit(key)
            if key.purpose == Purpose.ENCRYPT.value
            and key.algorithm not in RSA_ENCRYPTION_ALGORITHMS
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

    def _verify_version(self, key: KeyRecord, record: KeyVersionRecord) -> None:
        encoded = encode_version_row(key, record.version, record.wrapped_key, record.public_key)
        self._keyring.verify_tag(
            encoded, record.mac, f"key {key.key_id!r}: version {record.version}"
        )

    def _usable_key(self, key_id: str, purpose: Purpose | None) -> KeyRecord:
        """The key, read from the database and checked, for a use outside the hot path (the
        public key): see ``_usable``."""
        return self._usable(
            self._checked_key(self._repository.get_key(validate_key_id(key_id))), purpose
        )

    def _usable(self, key: KeyRecord, purpose: Purpose | None) -> KeyRecord:
        """A checked key row, for a cryptographic operation: refused while disabled, and while
        pending deletion (the attempt is recorded on the key first); of ``purpose`` unless
        None."""
        if key.state != ENABLED:
            if key.state == PENDING_DELETION:
                self._record_use_attempt(key)
                raise KeyPendingDeletion()
            raise KeyDisabled()
        if purpose is not None and key.purpose != purpose.value:
            raise PurposeMismatch(f"key {key.key_id} has purpose {key.purpose}")
        return key

    def _record_use_attempt(self, key: KeyRecord) -> None:
        requester = CURRENT_REQUESTER.get()
        attempt = {
            "at": self._clock().isoformat(),
            "caller": "-" if requester is None else requester.caller,
            "operation": "-" if requester is None else requester.operation,
        }
        try:
            self._repository.record_use_attempt(key.key_id, key.incarnation, json.dumps(attempt))
        except StoreUnavailable:
            # The refusal matters more than its bookkeeping: still answer 409.
            lifecycle_log.warning("could not record a use attempt of key %r", key.key_id)
        # INFO, not WARNING: a caller retrying in a loop must not flood the log; the count and
        # the last attempt are on the key, and the audit log has every request.
        lifecycle_log.info(
            "key %r is pending deletion and was asked to %s by %s",
            key.key_id,
            attempt["operation"],
            attempt["caller"],
        )

    def _version(self, key: KeyRecord, version: int) -> KeyVersionRecord:
        """A version row, its MAC checked against ``key``.

        A row that does not match may only mean that ``key`` is out of date (read from the row
        cache, or just before a recreate): when the key row changed since, that is
        ``_StaleRow`` (the operation is retried), not an integrity failure.
        """
        if not key.min_available_version <= version <= key.latest_version:
            raise KeyNotFound()
        record = self._prefetched.pop((key.key_id, key.mac, version), None)
        if record is None:
            record = self._repository.get_version(key.key_id, version)
        try:
            self._verify_version(key, record)
        except IntegrityFailure as error:
            try:
                current = self._repository.get_key(key.key_id)
            except KeyNotFound:
                raise _StaleRow() from None
            if current.mac != key.mac:
                raise _StaleRow() from None
            log.error("integrity check failed: %s", error.detail)
            raise
        return record

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
        cache_key = self._secret_cache_key(key, version)
        loaded = self._cache.get(cache_key)
        if loaded is None:
            loaded = self._load(key, self._version(key, version))
            self._cache.put(cache_key, loaded, _material_bytes(key.algorithm))
        return loaded

    def _forget_material(self, key_id: str) -> None:
        """Drop what this worker holds of a key's versions: loaded secrets, and version rows
        read with the key row and not used yet (the key was destroyed, recreated or trimmed)."""
        self._cache.drop_key(key_id)
        for entry in [entry for entry in list(self._prefetched) if entry[0] == key_id]:
            self._prefetched.pop(entry, None)

    @staticmethod
    def _secret_cache_key(key: KeyRecord, version: int) -> tuple[str, str, str, int]:
        return ("secret", key.key_id, key.incarnation, version)

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
            self._cache.put(cache_key, loaded, _material_bytes(key.algorithm, public=True))
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
        if record.version < key.min_available_version:
            raise IntegrityFailure(
                f"{where}: below min_available_version {key.min_available_version} (trimmed)"
            )
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


def _stale_result(result: Any) -> bool:
    """A result a stale key row may have caused: an invalid signature or MAC, a ciphertext
    refused (a batch: any item so)."""
    if isinstance(result, list):
        return any(_stale_result(item) for item in result)
    if isinstance(result, Verified):
        return not result.valid
    return isinstance(result, InvalidCiphertext | VersionBelowMinimum)


def _each(items: Sequence[BatchItem], one: Callable[[Mapping[str, Any]], Any]) -> list[Any]:
    """``one`` for every item, in order; an item's own failure becomes its result.

    Only the errors a single call answers with a 4xx about its own input are kept per item; a
    state of the key (disabled, pending deletion) or a fault of the server or the database
    (integrity failure, storage unavailable) still fails the whole batch, as it would the
    single call.
    """
    results: list[Any] = []
    for item in items:
        if isinstance(item, KMSError):
            results.append(item)
            continue
        try:
            results.append(one(item))
        except (InvalidRequest, InvalidCiphertext, VersionBelowMinimum) as error:
            # VersionBelowMinimum is the item's own: its ciphertext or signature is that old.
            results.append(error)
    return results
