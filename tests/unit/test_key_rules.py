"""The key-state rules (kms.service.keys.rules) on plain records: no database, no keyring."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from kms.crypto.algorithms import Purpose
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
from kms.service.keys import rules
from kms.service.keys.rules import AlgorithmFit, KeyUpdate, NotDue, NotLatest
from kms.store.records import KeyRecord, KeyState

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(**changes: object) -> KeyRecord:
    key = KeyRecord(
        key_id="k",
        purpose="encrypt",
        algorithm="AES-256-GCM",
        state=KeyState.ENABLED,
        latest_version=3,
        incarnation="i1",
        created_at=NOW,
    )
    return replace(key, **changes)  # type: ignore[arg-type]


PENDING = record(state=KeyState.PENDING_DELETION, pending_deletion_at=NOW)

#: Every transition but cancel_deletion, applied to a key pending deletion.
CHANGES = {
    "schedule_deletion": lambda key: rules.schedule_deletion(key, NOW),
    "enable": lambda key: rules.set_state(key, KeyState.ENABLED),
    "disable": lambda key: rules.set_state(key, KeyState.DISABLED),
    "update": lambda key: rules.update(key, KeyUpdate(description="x")),
    "trim": lambda key: rules.trim(key, 1),
    "next_version": lambda key: rules.next_version(key, None, 100),
    "recreate": lambda key: rules.recreate(key, "i2", NOW, 0),
    "use": lambda key: rules.require_usable(key, None),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_key_pending_deletion_refuses_every_change_but_cancel(change: str) -> None:
    with pytest.raises(KeyPendingDeletion):
        CHANGES[change](PENDING)


def test_cancel_brings_a_pending_key_back_disabled_and_keeps_the_attempts() -> None:
    pending = replace(PENDING, use_attempts_while_pending=4, last_use_attempt='{"at":"x"}')
    cancelled = rules.cancel_deletion(pending)
    assert cancelled.state == KeyState.DISABLED
    assert cancelled.pending_deletion_at is None
    assert (cancelled.use_attempts_while_pending, cancelled.last_use_attempt) == (4, '{"at":"x"}')
    with pytest.raises(KeyStateConflict, match="not pending deletion"):
        rules.cancel_deletion(record())


def test_scheduling_sets_the_due_date_and_clears_the_attempts() -> None:
    key = record(use_attempts_while_pending=2, last_use_attempt="{}")
    scheduled = rules.schedule_deletion(key, NOW + timedelta(days=7))
    assert scheduled.state == KeyState.PENDING_DELETION
    assert scheduled.pending_deletion_at == NOW + timedelta(days=7)
    assert (scheduled.use_attempts_while_pending, scheduled.last_use_attempt) == (0, None)
    with pytest.raises(DeletionNotAllowed):
        rules.schedule_deletion(record(deletion_allowed=False), NOW)


def test_a_disabled_key_is_not_usable_and_the_purpose_must_match() -> None:
    with pytest.raises(KeyDisabled):
        rules.require_usable(record(state=KeyState.DISABLED), Purpose.ENCRYPT)
    with pytest.raises(PurposeMismatch, match="has purpose encrypt"):
        rules.require_usable(record(), Purpose.SIGN)
    assert rules.require_usable(record(), Purpose.ENCRYPT) == record()
    assert rules.require_usable(record(), None) == record()


def test_a_usable_key_is_of_an_algorithm_the_request_s_own_fits() -> None:
    """``AlgorithmFit``: refused with the name the request used, after the state and purpose
    (a disabled key says so, whatever the algorithm asked for)."""
    symmetric = AlgorithmFit("EncryptionAlgorithm SYMMETRIC_DEFAULT", frozenset({"AES-256-GCM"}))
    oaep = AlgorithmFit("EncryptionAlgorithm RSAES_OAEP_SHA_256", frozenset({"RSA-OAEP-2048"}))
    assert rules.require_usable(record(), Purpose.ENCRYPT, symmetric) == record()
    with pytest.raises(PurposeMismatch) as refused:
        rules.require_usable(record(), Purpose.ENCRYPT, oaep)
    assert refused.value.public_message == (
        "EncryptionAlgorithm RSAES_OAEP_SHA_256 does not fit this AES-256-GCM key"
    )
    with pytest.raises(KeyDisabled):
        rules.require_usable(record(state=KeyState.DISABLED), Purpose.ENCRYPT, oaep)
    with pytest.raises(PurposeMismatch, match="has purpose encrypt"):
        rules.require_usable(record(), Purpose.SIGN, oaep)


def test_an_update_changes_only_what_it_names() -> None:
    key = record(description="old", labels='{"a":"b"}', min_available_version=2)
    updated = rules.update(
        key,
        KeyUpdate(
            min_decryption_version=3,
            deletion_allowed=False,
            rotation_period=(3600,),
            max_encryptions_per_version=(None,),
        ),
    )
    assert (updated.description, updated.labels) == ("old", '{"a":"b"}')
    assert (updated.min_decryption_version, updated.deletion_allowed) == (3, False)
    assert (updated.rotation_period, updated.max_encryptions_per_version) == (3600, None)


@pytest.mark.parametrize("minimum", [1, 4])
def test_the_decryption_fence_stays_between_the_oldest_kept_and_the_latest(minimum: int) -> None:
    with pytest.raises(InvalidRequest, match="from 2 .* to 3"):
        rules.update(record(min_available_version=2), KeyUpdate(min_decryption_version=minimum))


def test_a_trim_goes_no_higher_than_the_fence_and_twice_is_nothing() -> None:
    key = record(min_decryption_version=2)
    with pytest.raises(KeyStateConflict, match="raise that first"):
        rules.trim(key, 3)
    trimmed = rules.trim(key, 2)
    assert trimmed is not None and trimmed.min_available_version == 2
    assert rules.trim(trimmed, 2) is None
    assert rules.trim(trimmed, 1) is None


def test_only_a_pending_key_past_its_window_that_may_go_is_due() -> None:
    rules.require_due(PENDING, NOW)
    for not_due in (
        record(),
        replace(PENDING, pending_deletion_at=NOW + timedelta(seconds=1)),
        replace(PENDING, pending_deletion_at=None),
        replace(PENDING, deletion_allowed=False),
    ):
        with pytest.raises(NotDue):
            rules.require_due(not_due, NOW)


def test_rotation_is_due_once_the_period_has_passed() -> None:
    key = record(rotation_period=3600)
    assert not rules.rotation_due(key, NOW, NOW + timedelta(seconds=3599))
    assert rules.rotation_due(key, NOW, NOW + timedelta(seconds=3600))
    assert not rules.rotation_due(record(), NOW, NOW + timedelta(days=9999))


def test_the_next_version_is_one_more_only_from_the_version_found() -> None:
    assert rules.next_version(record(), None, 4).latest_version == 4
    assert rules.next_version(record(), 3, 4).latest_version == 4
    with pytest.raises(NotLatest):
        rules.next_version(record(), 2, 100)
    with pytest.raises(TooManyVersions, match="maximum of 3 versions"):
        rules.next_version(record(), None, 3)


def test_a_recreate_starts_a_new_incarnation_at_version_one() -> None:
    key = record(min_decryption_version=3, min_available_version=2, description="kept")
    later = NOW + timedelta(days=1)
    fresh = rules.recreate(key, "i2", later, 0)
    assert (fresh.latest_version, fresh.incarnation, fresh.created_at) == (1, "i2", later)
    assert (fresh.min_decryption_version, fresh.min_available_version) == (1, 1)
    assert fresh.description == "kept"
    with pytest.raises(DeletionNotAllowed):
        rules.recreate(record(deletion_allowed=False), "i2", NOW, 0)
    with pytest.raises(KeyStateConflict, match="waiting period"):
        rules.recreate(key, "i2", NOW, 1)


def test_material_made_for_one_incarnation_fits_no_other() -> None:
    rules.require_same_key(record(), record(latest_version=9))
    with pytest.raises(KeyChanged):
        rules.require_same_key(record(), record(incarnation="i2"))
    with pytest.raises(KeyChanged):
        rules.require_same_key(record(), record(algorithm="ChaCha20-Poly1305"))


# -- aliases ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "new", "moves"),
    [
        (("encrypt", "AES-256-GCM"), ("encrypt", "ChaCha20-Poly1305"), True),
        (("encrypt", "RSA-OAEP-2048"), ("encrypt", "RSA-OAEP-4096"), True),
        (("sign", "ECDSA-P256"), ("sign", "RSA-3072"), True),
        (("mac", "HMAC-SHA256"), ("mac", "HMAC-SHA512"), True),
        (("encrypt", "AES-256-GCM"), ("encrypt", "RSA-OAEP-2048"), False),
        (("encrypt", "RSA-OAEP-2048"), ("sign", "RSA-2048"), False),
        (("encrypt", "AES-256-GCM"), ("mac", "HMAC-SHA256"), False),
    ],
)
def test_an_alias_moves_only_between_keys_of_one_usage_and_type(
    current: tuple[str, str], new: tuple[str, str], moves: bool
) -> None:
    before = record(purpose=current[0], algorithm=current[1])
    after = record(key_id="other", purpose=new[0], algorithm=new[1])
    if moves:
        rules.require_alias_move(before, after)
    else:
        with pytest.raises(InvalidRequest, match="same key usage and type"):
            rules.require_alias_move(before, after)


def test_an_alias_is_not_made_for_or_moved_to_a_key_pending_deletion() -> None:
    pending = record(state=KeyState.PENDING_DELETION)
    with pytest.raises(KeyPendingDeletion):
        rules.require_alias_target(pending)
    with pytest.raises(KeyPendingDeletion):
        rules.require_alias_move(record(), pending)
