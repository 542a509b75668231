"""Edges of the key lifecycle found by ``make mutants`` (tools/mutants): the smallest mandatory
waiting period, Vault's create of a key that exists, and ``kms rotate-due`` on a key at
``kms.max_versions``. In process, on a real keystore."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from kms.errors import KeyStateConflict
from kms.store.records import utc_now
from tests.helpers.keystore import Store


def test_a_waiting_period_of_one_day_refuses_an_immediate_destroy(store: Store) -> None:
    """``kms.deletion.min_pending_days: 1`` makes the window mandatory, as any value above 0."""
    service = store.service(64, deletion_min_pending_days=1)
    service.create_key("kept")
    with pytest.raises(KeyStateConflict, match="at least 1 days"):
        service.delete_key("kept")
    assert service.get_key("kept").state == "enabled"
    assert service.delete_key("kept", pending_days=1) is not None


def test_ensure_key_says_whether_it_made_the_key(store: Store) -> None:
    """Vault's create answers a warning only when the key already existed."""
    service = store.service(64)
    made, created = service.ensure_key(
        "vault-key", "encrypt", "AES-256-GCM", deletion_allowed=False
    )
    assert (made.key_id, created) == ("vault-key", True)
    found, created = service.ensure_key(
        "vault-key", "encrypt", "AES-256-GCM", deletion_allowed=False
    )
    assert (found.key_id, created) == ("vault-key", False)


def test_rotate_due_names_a_key_at_max_versions_and_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A due key that cannot rotate (``kms.max_versions``) is skipped with an error line that
    names it: the operator's one sign that its rotation period is not kept."""
    service = store.service(64, max_versions=2)
    service.create_key("full", rotation_period="1d")
    service.rotate_key("full")
    service.create_key("due", rotation_period="1d")
    with caplog.at_level(logging.ERROR, logger="kms"):
        rotated = service.rotate_due(now=utc_now() + timedelta(days=2))
    assert [(done.key_id, done.version) for done in rotated] == [("due", 2)]
    assert "rotate-due: key 'full' is at kms.max_versions" in caplog.text
