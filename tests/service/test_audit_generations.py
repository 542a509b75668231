"""The audit trail records the generation of every change, and ``kms check --audit`` compares the
database with it: a key rolled back (its row put back with SQL), and the whole database rolled
back (an older backup restored), are named. Through the app (Flask's client) on a real SQLite
file, and the check as the operator runs it."""

from __future__ import annotations

import json
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy import text

from kms.backups import backup_database, restore_database
from kms.master import check_database
from kms.settings import Settings
from kms.store.db import create_kms_engine
from tests.helpers.audit import rechain


def generations(audit_path: Path) -> list[tuple[str, str, int]]:
    lines = [json.loads(line) for line in audit_path.read_bytes().splitlines()]
    return [
        (line["operation"], line["key_id"], line["key_generation"])
        for line in lines
        if "key_generation" in line
    ]


def test_each_change_is_audited_with_its_generation_and_a_rollback_is_named(
    audited_client: FlaskClient, initialised: Settings, audit_path: Path
) -> None:
    assert audited_client.post("/v1/kms/keys", json={"key_id": "orders"}).status_code == 201
    assert (
        audited_client.post(
            "/v1/kms/encrypt", json={"key_id": "orders", "plaintext": "aGk="}
        ).status_code
        == 200
    )
    engine = create_kms_engine(initialised.database_url, pool=False)
    with engine.connect() as conn:
        old_row = dict(
            conn.execute(text("SELECT * FROM keys WHERE key_id = 'orders'")).one()._mapping
        )
    assert audited_client.post("/v1/kms/keys/orders/disable").status_code == 200
    assert audited_client.post("/v1/kms/keys/orders/rotate").status_code == 200
    recorded = generations(audit_path)
    # Only the changes carry a generation, each above the one before (the encrypt does not).
    assert [(op, key) for op, key, _ in recorded] == [
        ("keys:create", "orders"),
        ("keys:disable", "orders"),
        ("keys:rotate", "orders"),
    ]
    numbers = [generation for _, _, generation in recorded]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3

    report = check_database(initialised, (audit_path,))
    assert report.failures == []
    assert report.trail_epoch == report.epoch == numbers[-1]

    # The key's row put back from before the disable: named.
    columns = [name for name in old_row if name != "key_id"]
    assignments = ", ".join(f"{column} = :{column}" for column in columns)
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE keys SET {assignments} WHERE key_id = :key_id"),  # noqa: S608
            old_row,
        )
    engine.dispose()
    failures = check_database(initialised, (audit_path,)).failures
    assert (
        f"key 'orders': rolled back: the row is at generation {old_row['generation']}, "
        f"the audit trail records generation {numbers[-1]}"
    ) in failures
    # Without the trail, the database itself shows only the version row left above the key's.
    assert check_database(initialised).failures == [
        "key 'orders': version 2: above the latest version 1"
    ]


def test_a_whole_database_rolled_back_is_named_by_its_epoch(
    audited_client: FlaskClient, initialised: Settings, audit_path: Path, tmp_path: Path
) -> None:
    assert audited_client.post("/v1/kms/keys", json={"key_id": "first"}).status_code == 201
    backup_database(initialised, tmp_path / "old.backup")
    assert audited_client.post("/v1/kms/keys", json={"key_id": "later"}).status_code == 201
    assert audited_client.post("/v1/kms/keys/first/rotate").status_code == 200

    elsewhere = initialised.with_overrides(database_dsn=str(tmp_path / "rolled-back" / "kms.db"))
    restore_database(elsewhere, tmp_path / "old.backup")
    report = check_database(elsewhere, (audit_path,))
    assert report.epoch is not None and report.trail_epoch is not None
    assert report.epoch < report.trail_epoch
    assert report.failures[0] == (
        f"the keystore epoch {report.epoch} is older than epoch {report.trail_epoch}, which the "
        "audit trail records: the whole database was rolled back"
    )
    assert any("key 'first': rolled back" in failure for failure in report.failures)


def test_a_rollback_hidden_by_rewriting_the_trail_is_named(
    audited_client: FlaskClient, initialised: Settings, audit_path: Path
) -> None:
    """Whoever rolls a key back and deletes the trail's lines of the changes since (every hash
    after them recomputed, as the unkeyed chain allowed) has no audit key: `kms check --audit`
    names the first line whose MAC fails instead of finding nothing to compare."""
    assert audited_client.post("/v1/kms/keys", json={"key_id": "orders"}).status_code == 201
    engine = create_kms_engine(initialised.database_url, pool=False)
    with engine.connect() as conn:
        old_row = dict(
            conn.execute(text("SELECT * FROM keys WHERE key_id = 'orders'")).one()._mapping
        )
    kept = len(audit_path.read_bytes().splitlines())
    assert audited_client.post("/v1/kms/keys/orders/disable").status_code == 200
    assert audited_client.post("/v1/kms/keys", json={"key_id": "later"}).status_code == 201
    columns = [name for name in old_row if name != "key_id"]
    assignments = ", ".join(f"{column} = :{column}" for column in columns)
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE keys SET {assignments} WHERE key_id = :key_id"),  # noqa: S608
            old_row,
        )
    engine.dispose()
    lines = audit_path.read_bytes().splitlines(keepends=True)
    disable = [line for line in lines[kept:] if b"keys:disable" in line]
    assert len(disable) == 2  # its arrival and its answer
    rest = [line for line in lines if line not in disable]
    audit_path.write_bytes(b"".join(rechain(rest, kept + 1)))
    assert [key for _, key, _ in generations(audit_path)] == ["orders", "later"]

    failures = check_database(initialised, (audit_path,)).failures
    assert any(
        failure.startswith(f"audit trail {audit_path}:{kept + 1}: chain broken: its MAC")
        for failure in failures
    ), failures
