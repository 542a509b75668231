"""``kms check`` names a keystore epoch row that fails its MAC (kms.service.keys.maintenance:
"failures are collected, not raised, so one report names them all"), in process on a real
database.
"""

from __future__ import annotations

from tests.helpers.keystore import Store


def test_check_names_an_epoch_row_that_fails_its_mac(store: Store) -> None:
    service = store.service()
    service.create_key("k")
    (epoch,) = store.row("SELECT value FROM kms_metadata WHERE name = 'epoch'")
    forged = bytes(epoch[:-1]) + bytes([epoch[-1] ^ 1])
    store.sql("UPDATE kms_metadata SET value = :v WHERE name = 'epoch'", v=forged)

    report = service.check_integrity()

    assert report.epoch is None
    assert any("the keystore epoch" in failure for failure in report.failures), report.failures
