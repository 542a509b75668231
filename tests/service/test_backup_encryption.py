"""Encrypted backups (docs/operations.md, "Backup and restore"; docs/security.md, "Backups"): a
``kms backup`` file read without the passphrase shows its cleartext header and nothing else, and
a format-2 backup (taken by an earlier release) still restores."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest

from kms.backups import backup_database, restore_database
from kms.errors import InvalidBackup, KeyPendingDeletion
from kms.master import check_database
from kms.service.keys.operations import CURRENT_REQUESTER, Requester
from kms.settings import Settings
from kms.store.schema import head_revision
from tests.helpers.backups import open_backup
from tests.helpers.keystore import write_passphrase_file
from tests.service.test_backup import fresh, open_service


def readable_in(data: bytes, value: bytes) -> bool:
    """``value`` as stored, or as a backup's JSON would spell it (base64, or text)."""
    return value in data or base64.b64encode(value) in data


def test_a_backup_read_without_the_passphrase_shows_only_its_header(
    initialised: Settings, tmp_path: Path
) -> None:
    service, close = open_service(initialised)
    try:
        service.create_key("payroll-2026", description="salaries of the board")
        service.update_key("payroll-2026", labels={"owner": "finance-team"})
        service.encrypt("payroll-2026", b"x")
        service.create_key("doomed-key")
        service.delete_key("doomed-key", pending_days=7)
        token = CURRENT_REQUESTER.set(Requester(caller="billing-service", operation="decrypt"))
        try:
            with pytest.raises(KeyPendingDeletion):
                service.encrypt("doomed-key", b"x")
        finally:
            CURRENT_REQUESTER.reset(token)
    finally:
        close()
    target = tmp_path / "kms.backup"
    backup_database(initialised, target)
    data = target.read_bytes()

    document = open_backup(initialised, data)  # what the passphrase opens
    values = [
        b"payroll-2026",
        b"salaries of the board",
        b"finance-team",
        b"billing-service",
        b"doomed-key",
        b"pending_deletion",
        b"kms_metadata",
        b"init_marker",
        head_revision().encode(),
    ]
    assert all(value in document for value in values)
    rows = [json.loads(line) for line in document.splitlines()[1:-1]]
    stored = [
        base64.b64decode(value["b64"])
        for row in rows
        for value in row["row"].values()
        if isinstance(value, dict) and "b64" in value
    ]
    metadata = {
        row["row"]["name"]: base64.b64decode(row["row"]["value"]["b64"])
        for row in rows
        if row["table"] == "kms_metadata"
    }
    marker, kdf = metadata.pop("init_marker"), metadata.pop("kdf_parameters")
    keystore_id = metadata["keystore_id"]

    header, _, sealed = data.partition(b"\n")
    fields = json.loads(header)
    assert set(fields) == {"format", "keystore_id", "salt", "sealed"}
    assert fields["format"] == "kms-backup/3"
    # Cleartext by design: a restore opens the root secret from them (sealed under AES-GCM).
    root_secret = metadata.pop("root_secret")
    assert fields["sealed"] == {
        "kdf_parameters": base64.b64encode(kdf).decode(),
        "root_secret": base64.b64encode(root_secret).decode(),
    }
    assert base64.b64decode(fields["keystore_id"]) == keystore_id
    assert not readable_in(data, marker)  # no offline check of a passphrase guess but the AEAD
    assert [value for value in values if value in data] == []
    assert [value for value in stored if readable_in(sealed, value)] == []


def test_a_backup_taken_in_format_2_still_restores(initialised: Settings, tmp_path: Path) -> None:
    """A file an earlier release wrote: the same document, not sealed."""
    service, close = open_service(initialised)
    try:
        service.create_key("old")
        ciphertext = service.encrypt("old", b"before the upgrade").ciphertext
    finally:
        close()
    target = tmp_path / "kms.backup"
    backup_database(initialised, target)
    older = tmp_path / "format-2.backup"
    older.write_bytes(open_backup(initialised, target.read_bytes()))
    assert older.read_bytes().startswith(b'{"format":"kms-backup/2"')
    restored = fresh(initialised, tmp_path / "restored")
    restore_database(restored, older)
    assert check_database(restored).failures == []
    service, close = open_service(restored)
    try:
        assert service.decrypt("old", ciphertext).plaintext == b"before the upgrade"
    finally:
        close()


def test_a_backup_is_refused_under_another_passphrase(
    initialised: Settings, tmp_path: Path
) -> None:
    target = tmp_path / "kms.backup"
    backup_database(initialised, target)
    restored = fresh(initialised, tmp_path / "restored")
    restored = dataclasses.replace(
        restored,
        master_passphrase_file=write_passphrase_file(tmp_path / "guess", b"a good guess"),
    )
    with pytest.raises(InvalidBackup, match="passphrase is not the one"):
        restore_database(restored, target)
    assert list((tmp_path / "restored").iterdir()) == []


def test_a_backup_cut_short_is_named_truncated_before_the_passphrase_is_doubted(
    initialised: Settings, tmp_path: Path
) -> None:
    """A copy that stopped early says so, not "the passphrase is not the one": cut in its sealed
    stream, or before the end of its header line (no newline at all)."""
    target = tmp_path / "kms.backup"
    backup_database(initialised, target)
    data = target.read_bytes()
    restored = fresh(initialised, tmp_path / "restored")
    cut = tmp_path / "cut.backup"
    for damaged, cause in [
        (data[:-10], r"the backup is truncated \(.*cut short.*\); nothing was written"),
        (data[: data.index(b"\n")], r"the backup is truncated \(no final line\)"),
    ]:
        cut.write_bytes(damaged)
        with pytest.raises(InvalidBackup, match=cause):
            restore_database(restored, cut)
    assert list((tmp_path / "restored").iterdir()) == []
