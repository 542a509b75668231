"""What the store hands out and takes in: its records, the key states, and the repository protocol.

Plain data, no SQL: the service and its tests depend on these, never on the SQL implementation
(``kms.store.repository``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

#: The names of the ``kms_metadata`` rows that make the keystore.
KDF_PARAMETERS = "kdf_parameters"
INIT_MARKER = "init_marker"
#: Keystore format 3 on: random bytes made at ``kms init``, bound into every row MAC, every wrap
#: and the init marker (kms.service.keystore).
KEYSTORE_ID = "keystore_id"
#: Keystore format 3 on: the keystore epoch, raised by every key change, under a MAC
#: (kms.service.keys.generations).
EPOCH = "epoch"
#: Keystore format 4 on: the root secret, sealed by the master-key backend
#: (kms.service.masterkey); ``kdf_parameters`` exists only while the passphrase backend seals it.
ROOT_SECRET = "root_secret"  # noqa: S105 - the name of a row, not a secret


class KeyState(StrEnum):
    """The states of a key row, as stored in ``keys.state``; each compares equal to its string."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    PENDING_DELETION = "pending_deletion"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A row of ``keys``.

    Every field but ``mac`` is authenticated by ``mac`` (kms.service.integrity encodes them all,
    in this order). A field added later is covered from its first day; give it a default equal
    to what the migration stores in existing rows, and existing MACs stay valid (a field at its
    default is left out of the encoding).
    """

    key_id: str
    purpose: str
    algorithm: str
    state: str
    latest_version: int
    incarnation: str
    created_at: datetime
    # Issue 8 (migration 0003). Defaults equal what the migration stores in existing rows.
    description: str = ""
    labels: str = (
        "{}"  # canonical JSON: sorted keys, no spaces (kms.service.keys.validation.encode_labels)
    )
    min_decryption_version: int = 1
    min_available_version: int = 1
    deletion_allowed: bool = True
    pending_deletion_at: datetime | None = None
    # Issue 11 (migration 0004). Seconds; None: no rotation by time.
    rotation_period: int | None = None
    #: None: the configured default applies.
    max_encryptions_per_version: int | None = None
    #: The keystore epoch of the change that wrote this row (migration 0006): raised by every
    #: change, never lowered; a node refuses a row older than one it has seen.
    generation: int = 1
    # Bookkeeping, not authenticated (kms.service.integrity.NOT_AUTHENTICATED).
    use_attempts_while_pending: int = 0
    last_use_attempt: str | None = None  # JSON {"at", "caller", "operation"}
    mac: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class KeyVersionRecord:
    key_id: str
    version: int
    wrapped_key: bytes
    public_key: bytes | None
    created_at: datetime
    mac: bytes | None = None

    def __repr__(self) -> str:  # the wrapped key stays out of logs and tracebacks
        return f"KeyVersionRecord(key_id={self.key_id!r}, version={self.version})"


@dataclass(frozen=True)
class KeyVersionSummary:
    """A version's number, time and use counters, without its material: what listings need."""

    version: int
    created_at: datetime
    encryptions: int = 0
    decryptions: int = 0
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class UseReport:
    """Decryptions, encryptions made and the last use of one version, counted by a process since
    its last flush."""

    key_id: str
    version: int
    decryptions: int
    last_used_at: datetime
    encryptions: int = 0


@dataclass(frozen=True)
class DueKey:
    """A key with rotation by time, and when its latest version was made."""

    key: KeyRecord
    latest_created_at: datetime


@dataclass(frozen=True)
class NewVersion:
    """What a caller hands the repository for a version it has just built."""

    wrapped_key: bytes
    public_key: bytes | None
    mac: bytes

    def __repr__(self) -> str:
        return "NewVersion(...)"


@dataclass(frozen=True)
class KeyChange:
    """A key row as it is to be written (MAC included) and the version to insert with it, if any.

    The version's number is ``key.latest_version``. ``replace_versions`` deletes every other
    version first (recreate); ``delete_versions_below`` deletes the versions below that number
    (trim). ``epoch`` is the keystore epoch row's new value (None: left as it is).
    """

    key: KeyRecord
    version: NewVersion | None = None
    replace_versions: bool = False
    delete_versions_below: int | None = None
    epoch: bytes | None = None


@dataclass(frozen=True, slots=True)
class AliasRecord:
    """A row of ``aliases``: the name (``alias/...``) and the key it names.

    ``mac`` covers every other field (kms.service.integrity.encode_alias_row); ``generation`` is
    the keystore epoch of the change that wrote the row, as for key rows.
    """

    alias_name: str
    key_id: str
    created_at: datetime
    updated_at: datetime
    generation: int
    mac: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class AliasChange:
    """An alias row as it is to be written (MAC included), or None to delete it, and the
    keystore epoch row's new value."""

    alias: AliasRecord | None
    epoch: bytes


#: Decides, under the locks of the alias row, of the key it is to name (None for a delete) and
#: of the epoch row, what to write given the alias row as it is now (None: there is none) and
#: the stored epoch row; raises to write nothing.
AliasPlanner = Callable[[AliasRecord | None, KeyRecord | None, bytes | None], AliasChange]

#: Decides, under the key row's write lock (and the epoch row's), what to write given the row as
#: it is now and the stored epoch row (None when missing); raises to write nothing.
KeyPlanner = Callable[[KeyRecord, bytes | None], KeyChange]
#: Decides, under the key row's write lock (and the epoch row's), whether the row as it is now may
#: be destroyed, given the stored epoch row; returns the epoch row's new value, raises to destroy
#: nothing.
DestroyCheck = Callable[[KeyRecord, bytes | None], bytes]
#: Computes the MAC of a key row, or of a version row given its key row (``kms upgrade``).
KeySealer = Callable[[KeyRecord], bytes]
#: Computes the MAC of an alias row (``kms rekey``, ``kms restore --as-clone``).
AliasSealer = Callable[[AliasRecord], bytes]
VersionSealer = Callable[[KeyRecord, KeyVersionRecord], bytes]
#: Re-wraps a version row for ``kms rekey``: its new wrapped key and new MAC.
VersionRewrapper = Callable[[KeyRecord, KeyVersionRecord], tuple[bytes, bytes]]


class KeyRepository(Protocol):
    """What the service needs of a store; ``kms.store.repository.SQLKeyRepository`` is the one
    over SQL. Each call is atomic on its own: the planners and checks passed in run under the
    key row's write lock, and whatever they raise writes nothing."""

    def read_keystore(self) -> bytes: ...
    def read_metadata(self) -> dict[str, bytes]: ...
    def count_macs(self) -> int: ...
    def replace_keystore(self, rows: dict[str, bytes], remove: Sequence[str] = ()) -> None: ...
    def create_key(self, key: KeyRecord, plan: KeyPlanner) -> KeyRecord: ...
    def get_key(self, key_id: str) -> KeyRecord: ...
    def get_key_and_latest_version(
        self, key_id: str
    ) -> tuple[KeyRecord, KeyVersionRecord | None]: ...
    def list_keys(
        self, limit: int, after: str | None, state: str | None = None
    ) -> list[KeyRecord]: ...
    def scan_keys(
        self,
        limit: int,
        after: str | None,
        state: str | None = None,
        patterns: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> list[KeyRecord]: ...
    def due_keys(self, now: datetime, limit: int, after: str | None) -> list[str]: ...
    def list_versions(self, key_id: str) -> list[KeyVersionRecord]: ...
    def version_page(
        self, key_id: str, limit: int, after: int | None
    ) -> list[KeyVersionSummary]: ...
    def newest_versions(self, key_id: str, count: int) -> list[KeyVersionSummary]: ...
    def get_version(self, key_id: str, version: int) -> KeyVersionRecord: ...
    def rotate_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord: ...
    def recreate_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord: ...
    def update_key(self, key_id: str, plan: KeyPlanner) -> KeyRecord: ...
    def destroy_key(self, key_id: str, check: DestroyCheck) -> tuple[KeyRecord, list[str]]: ...
    def get_alias(self, alias_name: str) -> AliasRecord | None: ...
    def list_aliases(
        self, limit: int, after: str | None, key_id: str | None = None
    ) -> list[AliasRecord]: ...
    def change_alias(self, alias_name: str, key_id: str | None, plan: AliasPlanner) -> None: ...
    def reclaim_destroyed(self, *, keystore: bool = False) -> bool: ...
    def record_use_attempt(self, key_id: str, incarnation: str, attempt: str) -> None: ...
    def count_keys_by_state(self) -> dict[str, int]: ...
    def seal_all(
        self, seal_key: KeySealer, seal_version: VersionSealer, keystore: dict[str, bytes]
    ) -> tuple[int, int]: ...
    def count_versions(self) -> int: ...
    def reserve_encryptions(
        self, key_id: str, version: int, wanted: int, at_least: int, limit: int
    ) -> int: ...
    def record_use(self, reports: list[UseReport]) -> None: ...
    def keys_with_rotation_period(self, limit: int, after: str | None) -> list[DueKey]: ...
    def use_totals(
        self, after: tuple[str, int] | None = None, limit: int | None = None
    ) -> list[tuple[str, int, int, int, int]]: ...
    def count_keys_with_rotation_period(self) -> int: ...
    def rewrap_all(
        self,
        seal_key: KeySealer,
        rewrap_version: VersionRewrapper,
        keystore: dict[str, bytes],
        seal_alias: AliasSealer | None = None,
    ) -> tuple[int, int]: ...
