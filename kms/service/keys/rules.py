"""The key-state rules: pure functions of a key record.

Each transition takes the key row as it is under its write lock (already MAC-checked) and
returns the row it becomes, or raises the refusal the client sees. Nothing here reads the
database, the clock or the keyring: the callers pass "now" and fresh values in, so every rule is
tested on plain records (``tests/unit/test_key_rules.py``).

The states: ``enabled`` (every use), ``disabled`` (no cryptographic use; readable, rotatable),
``pending_deletion`` (no use and no change but ``cancel_deletion``; destroyed when due).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from kms.crypto.algorithms import RSA_ENCRYPTION_ALGORITHMS, Purpose
from kms.errors import (
    DeletionNotAllowed,
    InvalidRequest,
    KeyChanged,
    KeyDisabled,
    KeyPendingDeletion,
    KeyStateConflict,
    PurposeMismatch,
    TooManyVersions,
)
from kms.store.records import KeyRecord, KeyState


class NotDue(Exception):
    """A key listed as due is no longer pending, or not yet due, once its row is locked."""


class NotLatest(Exception):
    """Another process already rotated the version found used up or due: write nothing."""


def require_not_pending(key: KeyRecord) -> None:
    """A key pending deletion refuses every change but ``cancel_deletion``."""
    if key.state == KeyState.PENDING_DELETION:
        raise KeyPendingDeletion()


@dataclass(frozen=True)
class AlgorithmFit:
    """An algorithm a request names, in its API's words (``name``, such as AWS's
    ``EncryptionAlgorithm RSAES_OAEP_SHA_256``), and the kms key algorithms it fits.

    The operations check it on the key row with the key's state and purpose, before any work:
    a request refused for it has used nothing (no encryption counted against a version's
    limit, no decryption made or counted, no key material unwrapped)."""

    name: str
    algorithms: frozenset[str]


def require_usable(
    key: KeyRecord, purpose: Purpose | None, fit: AlgorithmFit | None = None
) -> KeyRecord:
    """A key for a cryptographic operation: enabled, of ``purpose`` unless None, and of an
    algorithm ``fit`` names unless None."""
    if key.state != KeyState.ENABLED:
        require_not_pending(key)
        raise KeyDisabled()
    if purpose is not None and key.purpose != purpose.value:
        raise PurposeMismatch(f"key {key.key_id} has purpose {key.purpose}")
    if fit is not None and key.algorithm not in fit.algorithms:
        raise PurposeMismatch(f"{fit.name} does not fit this {key.algorithm} key")
    return key


def require_deletable(key: KeyRecord) -> None:
    require_not_pending(key)
    if not key.deletion_allowed:
        raise DeletionNotAllowed()


def require_same_key(expected: KeyRecord, current: KeyRecord) -> None:
    """``KeyChanged`` unless ``current`` is the key (algorithm and incarnation) that fresh
    material was generated for."""
    if (current.algorithm, current.incarnation) != (expected.algorithm, expected.incarnation):
        raise KeyChanged()


def alias_kind(key: KeyRecord) -> tuple[str, bool]:
    """What an alias may be moved between: the key's purpose, and whether it is symmetric."""
    return key.purpose, key.algorithm not in RSA_ENCRYPTION_ALGORITHMS and key.purpose != "sign"


def require_alias_target(key: KeyRecord) -> None:
    """A key an alias is made to name: not pending deletion (its existing aliases stay until
    it is destroyed, as in AWS KMS)."""
    require_not_pending(key)


def require_alias_move(current: KeyRecord, new: KeyRecord) -> None:
    """An alias moves only to a key of the same usage and kind (symmetric or not), so code
    that uses it keeps working (AWS KMS's rule)."""
    require_alias_target(new)
    if alias_kind(current) != alias_kind(new):
        raise InvalidRequest(
            "an alias moves only to a key of the same key usage and type: "
            f"it names a {current.purpose} key ({current.algorithm}), not a "
            f"{new.purpose} key ({new.algorithm})"
        )


def schedule_deletion(key: KeyRecord, due_at: datetime) -> KeyRecord:
    require_deletable(key)
    return replace(
        key,
        state=KeyState.PENDING_DELETION,
        pending_deletion_at=due_at,
        use_attempts_while_pending=0,
        last_use_attempt=None,
    )


def cancel_deletion(key: KeyRecord) -> KeyRecord:
    """Back to ``disabled`` (as in AWS KMS), so that it is enabled again deliberately; the
    use-attempt bookkeeping is kept."""
    if key.state != KeyState.PENDING_DELETION:
        raise KeyStateConflict("key is not pending deletion")
    return replace(key, state=KeyState.DISABLED, pending_deletion_at=None)


def set_state(key: KeyRecord, state: KeyState) -> KeyRecord:
    """Enable or disable."""
    require_not_pending(key)
    return replace(key, state=state)


@dataclass(frozen=True)
class KeyUpdate:
    """A validated ``PATCH``: None leaves a field as it is. The rotation fields, which None
    clears, are given as one-tuples: ``(3600,)`` sets, ``(None,)`` clears, None leaves."""

    description: str | None = None
    labels: str | None = None  # stored form (validation.encode_labels)
    min_decryption_version: int | None = None
    deletion_allowed: bool | None = None
    rotation_period: tuple[int | None] | None = None
    max_encryptions_per_version: tuple[int | None] | None = None


def update(key: KeyRecord, change: KeyUpdate) -> KeyRecord:
    """``min_decryption_version`` may range from the oldest version still stored to the latest."""
    require_not_pending(key)
    updated = key
    if change.description is not None:
        updated = replace(updated, description=change.description)
    if change.labels is not None:
        updated = replace(updated, labels=change.labels)
    if change.min_decryption_version is not None:
        low, high = key.min_available_version, key.latest_version
        if not low <= change.min_decryption_version <= high:
            raise InvalidRequest(
                f"min_decryption_version must be from {low} (the oldest version kept) "
                f"to {high} (the latest version)"
            )
        updated = replace(updated, min_decryption_version=change.min_decryption_version)
    if change.deletion_allowed is not None:
        updated = replace(updated, deletion_allowed=change.deletion_allowed)
    if change.rotation_period is not None:
        updated = replace(updated, rotation_period=change.rotation_period[0])
    if change.max_encryptions_per_version is not None:
        updated = replace(
            updated, max_encryptions_per_version=change.max_encryptions_per_version[0]
        )
    return updated


def trim(key: KeyRecord, min_available_version: int) -> KeyRecord | None:
    """The row with versions below ``min_available_version`` gone, or None when it is already
    trimmed that far. Only fenced versions may go: never above ``min_decryption_version``."""
    require_not_pending(key)
    if min_available_version > key.min_decryption_version:
        raise KeyStateConflict(
            "min_available_version must not exceed min_decryption_version "
            f"({key.min_decryption_version}); raise that first"
        )
    if min_available_version <= key.min_available_version:
        return None
    return replace(key, min_available_version=min_available_version)


def require_due(key: KeyRecord, now: datetime) -> None:
    """``NotDue`` unless the key is pending deletion, its window has passed, and it may go."""
    if (
        key.state != KeyState.PENDING_DELETION
        or key.pending_deletion_at is None
        or key.pending_deletion_at > now
        or not key.deletion_allowed
    ):
        raise NotDue()


def rotation_due(key: KeyRecord, latest_created_at: datetime, now: datetime) -> bool:
    return (
        key.rotation_period is not None
        and latest_created_at + timedelta(seconds=key.rotation_period) <= now
    )


def too_many_versions(max_versions: int) -> TooManyVersions:
    return TooManyVersions(
        f"key has reached the maximum of {max_versions} versions (kms.max_versions); "
        "recreate it or use a new key"
    )


def next_version(key: KeyRecord, only_from: int | None, max_versions: int) -> KeyRecord:
    """One version more. With ``only_from``, only if the latest version is still that one, so
    racing processes that all found it used up (or due) rotate it exactly once."""
    require_not_pending(key)
    if only_from is not None and key.latest_version != only_from:
        raise NotLatest()
    if key.latest_version >= max_versions:
        raise too_many_versions(max_versions)
    return replace(key, latest_version=key.latest_version + 1)


def require_recreatable(key: KeyRecord, min_pending_days: int) -> None:
    """Recreating destroys every version, so it is refused whenever a DELETE would be, and
    whenever a waiting period before destroying material is mandatory."""
    require_deletable(key)
    if min_pending_days > 0:
        raise KeyStateConflict(
            "recreate destroys every version, and kms.deletion.min_pending_days requires "
            "a waiting period before material is destroyed: use a new key instead"
        )


def recreate(key: KeyRecord, incarnation: str, now: datetime, min_pending_days: int) -> KeyRecord:
    """Version 1 of a fresh incarnation; state and metadata stay."""
    require_recreatable(key, min_pending_days)
    return replace(
        key,
        latest_version=1,
        incarnation=incarnation,
        created_at=now,
        min_decryption_version=1,
        min_available_version=1,
    )
