"""Key states and version policy at the service, on SQLite and PostgreSQL: what the row MAC
covers (state, version bounds, deletion_allowed, the deletion deadline) is refused when changed
behind kms's back; the use-attempt bookkeeping is not covered and decides nothing; verify's
version window never goes below min_decryption_version; destroy-due leaves a tampered row alone.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from kms.errors import (
    KeyPendingDeletion,
    KeyStateConflict,
    VersionBelowMinimum,
)
from kms.service.keys import CURRENT_REQUESTER, Requester
from kms.store.records import utc_now
from tests.helpers.keystore import Store, assert_refused


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("state", "'enabled'"),
        ("min_decryption_version", "1"),
        ("min_available_version", "1"),
        ("deletion_allowed", "true"),
        ("labels", '\'{"team":"x"}\''),
        ("description", "'changed'"),
    ],
)
def test_a_key_state_field_changed_behind_kms_is_refused(
    store: Store,
    column: str,
    value: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = store.service()
    service.create_key("guarded")
    service.rotate_key("guarded")
    service.rotate_key("guarded")
    service.update_key("guarded", min_decryption_version=2, deletion_allowed=False, description="d")
    service.trim_key("guarded", 2)
    service.disable_key("guarded")
    assert store.sql(f"UPDATE keys SET {column} = {value} WHERE key_id = 'guarded'") == 1  # noqa: S608
    assert_refused(lambda: store.service().encrypt("guarded", b"x"), "guarded", caplog)
    assert_refused(lambda: store.service().delete_key("guarded"), "guarded", caplog)
    # Nor may a change re-seal the changed row (that would launder it): every write refuses.
    assert_refused(
        lambda: store.service().update_key("guarded", description="x"), "guarded", caplog
    )
    assert_refused(lambda: store.service().enable_key("guarded"), "guarded", caplog)
    assert_refused(lambda: store.service().disable_key("guarded"), "guarded", caplog)
    assert_refused(lambda: store.service().trim_key("guarded", 2), "guarded", caplog)
    assert_refused(lambda: store.service().encrypt("guarded", b"x"), "guarded", caplog)


def test_a_pending_key_changed_behind_kms_is_not_cancelled(
    store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = store.service()
    service.create_key("pending")
    service.delete_key("pending", pending_days=7)
    assert store.sql("UPDATE keys SET description = 'changed' WHERE key_id = 'pending'") == 1
    assert_refused(lambda: store.service().cancel_deletion("pending"), "pending", caplog)
    assert_refused(lambda: store.service().cancel_deletion("pending"), "pending", caplog)


def test_a_deletion_deadline_moved_behind_kms_is_refused_and_not_destroyed(
    store: Store,
) -> None:
    service = store.service()
    service.create_key("later")
    service.delete_key("later", pending_days=30)
    store.sql(
        "UPDATE keys SET pending_deletion_at = :at WHERE key_id = 'later'",
        at=utc_now() - timedelta(days=1),
    )
    failures: list[str] = []
    destroyed = store.service().destroy_due(
        on_failure=lambda key_id, error: failures.append(key_id)
    )
    assert (destroyed, failures) == ([], ["later"])
    assert store.row("SELECT count(*) FROM key_versions WHERE key_id = 'later'")[0] == 1


def test_use_attempt_bookkeeping_is_outside_the_mac_and_decides_nothing(
    store: Store,
) -> None:
    service = store.service()
    service.create_key("watched")
    service.delete_key("watched", pending_days=7)
    token = CURRENT_REQUESTER.set(Requester(caller="batch-job", operation="decrypt"))
    try:
        with pytest.raises(KeyPendingDeletion):
            service.encrypt("watched", b"x")
    finally:
        CURRENT_REQUESTER.reset(token)
    key = service.get_key("watched")
    assert key.use_attempts_while_pending == 1
    assert key.last_use_attempt is not None
    assert (key.last_use_attempt["caller"], key.last_use_attempt["operation"]) == (
        "batch-job",
        "decrypt",
    )
    # Someone with write access can falsify it (documented), but the row still verifies and
    # the key is still refused; a value of the wrong shape is not shown.
    store.sql(
        "UPDATE keys SET use_attempts_while_pending = 0, last_use_attempt = :a "
        "WHERE key_id = 'watched'",
        a=json.dumps(["not", "an", "attempt"]),
    )
    fresh = store.service()
    assert fresh.get_key("watched").last_use_attempt is None
    with pytest.raises(KeyPendingDeletion):
        fresh.encrypt("watched", b"x")
    assert fresh.get_key("watched").use_attempts_while_pending == 1


def test_verify_stays_within_its_window_and_above_min_decryption_version(
    store: Store,
) -> None:
    service = store.service(64, verify_max_versions=2)
    service.create_key("signer", "sign", "Ed25519")
    signatures = {1: service.sign("signer", b"m").signature}
    for version in (2, 3, 4):
        service.rotate_key("signer")
        signatures[version] = service.sign("signer", b"m").signature
    # The window is versions 3 and 4; version 2 is never tried.
    assert not service.verify("signer", b"m", signatures[2]).valid
    assert service.verify("signer", b"m", signatures[3]).version == 3
    service.update_key("signer", min_decryption_version=4)
    with pytest.raises(VersionBelowMinimum):
        service.verify("signer", b"m", signatures[3])
    assert not service.verify("signer", b"m", signatures[1]).valid
    assert service.verify("signer", b"m", signatures[4]).version == 4


def test_destroy_due_with_an_injected_clock(store: Store) -> None:
    now = utc_now()
    service = store.service(64, clock=lambda: now)
    service.create_key("soon")
    assert service.delete_key("soon", pending_days=2) is not None
    assert service.destroy_due(now + timedelta(days=2) - timedelta(microseconds=1)) == []
    assert service.destroy_due(now + timedelta(days=2)) == ["soon"]
    assert service.destroy_due(now + timedelta(days=3)) == []
    assert store.row("SELECT count(*) FROM keys WHERE key_id = 'soon'")[0] == 0


def test_min_pending_days_also_refuses_recreate(store: Store) -> None:
    service = store.service(64, deletion_min_pending_days=3)
    service.create_key("kept")
    with pytest.raises(KeyStateConflict):
        service.recreate_key("kept")
    with pytest.raises(KeyStateConflict):
        service.delete_key("kept", pending_days=2)
    assert service.delete_key("kept", pending_days=3) is not None
