"""A change that finds the keystore epoch row failing its MAC is refused, logged once and counted
once as a "mac" refusal (``kms_integrity_failures_total{kind="mac"}``, docs/operations.md), in
process on a real database.
"""

from __future__ import annotations

import logging

import pytest

from kms.errors import IntegrityFailure
from tests.helpers.keystore import Store


def test_a_change_on_a_forged_epoch_row_is_refused_logged_and_counted_once(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    service = store.service()
    service.create_key("k")
    (epoch,) = store.row("SELECT value FROM kms_metadata WHERE name = 'epoch'")
    forged = bytes(epoch[:-1]) + bytes([epoch[-1] ^ 1])
    store.sql("UPDATE kms_metadata SET value = :v WHERE name = 'epoch'", v=forged)

    with caplog.at_level(logging.ERROR), pytest.raises(IntegrityFailure):
        service.rotate_key("k")

    assert service.trust.refused == {"mac": 1, "rollback": 0}
    failed = [r for r in caplog.records if "integrity check failed" in r.getMessage()]
    assert len(failed) == 1
    assert "epoch" in failed[0].getMessage()
    assert [v.version for v in service.get_key("k").key_versions] == [1]  # nothing written
