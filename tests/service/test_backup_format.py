"""What `kms restore` says about a damaged backup (docs/operations.md, "Backup and restore": it
checks "the structure, the row count, the passphrase against the backup's own init marker,
then the tag, then the schema revision" before writing anything).

tests/service/test_backup.py shows that damage is refused and nothing is written; here each
check names its own cause, on a real backup of a real keystore changed one way at a time. The
document inside the encrypted file is opened with the keystore's own keys, changed, tagged again
with its backup key and sealed again where the damage must be found by a check of its own
rather than by the encryption or the tag; the cases left unsealed are format-2 files (a document
alone), which restore checks the same way.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kms.backups import backup_database, restore_database
from kms.errors import BackupError, InvalidBackup
from kms.master import master_key_backend, open_master_keyring
from kms.service.backup import BackupWriter, verify_backup
from kms.service.masterkey import sealed_rows
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from kms.store.snapshot import column_names, table_names
from tests.helpers.backups import open_backup, seal_backup
from tests.helpers.keystore import TEST_PASSPHRASE


def dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def retag(settings: Settings, lines: list[bytes]) -> bytes:
    """``lines`` (header and rows) with a valid tag line under this keystore's backup key, sealed
    as a format-3 file."""
    body = b"".join(line + b"\n" for line in lines)
    keyring = open_master_keyring(settings)
    try:
        mac = keyring.backup_mac()
        try:
            tag = mac.tag(body)
        finally:
            mac.close()
    finally:
        keyring.close()
    document = body + dump({"tag": base64.b64encode(tag).decode("ascii")}) + b"\n"
    return seal_backup(settings, document)


def verify(settings: Settings, data: bytes) -> None:
    with master_key_backend(settings, bytearray(TEST_PASSPHRASE)) as backend:
        verify_backup(
            data,
            backend,
            columns=lambda table: column_names(table) if table in table_names() else None,
        )


@pytest.fixture
def backup(initialised: Settings, tmp_path: Path) -> list[bytes]:
    """A backup of a keystore with one key, as the lines of its document (header, rows, tag; no
    final b"")."""
    target = tmp_path / "kms.backup"
    backup_database(initialised, target)
    data = target.read_bytes()
    verify(initialised, data)  # the untouched backup passes
    return open_backup(initialised, data)[:-1].split(b"\n")


def _header(change: Callable[[dict], None]) -> Callable[[Settings, list[bytes]], bytes]:
    def damage(settings: Settings, lines: list[bytes]) -> bytes:
        header = json.loads(lines[0])
        change(header)
        return retag(settings, [dump(header), *lines[1:-1]])

    return damage


def _body(settings: Settings, lines: list[bytes], replacement: bytes) -> bytes:
    return retag(settings, [lines[0], replacement, *lines[2:-1]])


def _without_keystore(settings: Settings, lines: list[bytes]) -> bytes:
    rows = [line for line in lines[1:-1] if b'"kms_metadata"' not in line]
    header = json.loads(lines[0])
    header["rows"] = len(rows)
    return retag(settings, [dump(header), *rows])


def _unreadable_kdf_parameters(settings: Settings, lines: list[bytes]) -> bytes:
    changed = []
    for line in lines[1:-1]:
        row = json.loads(line)
        if row["table"] == "kms_metadata" and row["row"]["name"] == "kdf_parameters":
            row["row"]["value"] = {"b64": base64.b64encode(b"$pbkdf2-sha256$i=1").decode()}
            line = dump(row)
        changed.append(line)
    return retag(settings, [lines[0], *changed])


DAMAGE: dict[str, tuple[Callable[[Settings, list[bytes]], bytes], str]] = {
    "no final newline": (lambda s, lines: b"\n".join(lines), "truncated (no final line)"),
    "one line": (lambda s, lines: lines[0] + b"\n", "the backup is truncated; nothing"),
    "header not JSON": (
        lambda s, lines: b"\n".join([b"{nope", *lines[1:]]) + b"\n",
        "line 1 is not JSON",
    ),
    "header not an object": (
        lambda s, lines: b"\n".join([b"[1]", *lines[1:]]) + b"\n",
        "line 1 is not a JSON object",
    ),
    "another format": (
        _header(lambda header: header.update(format="kms-backup/0")),
        "not a kms backup (no kms-backup/2 header)",
    ),
    "no tag line": (
        lambda s, lines: b"\n".join(lines[:-1]) + b"\n",
        "truncated (no tag line)",
    ),
    "row count": (_header(lambda header: header.update(rows=header["rows"] + 1)), "rows and holds"),
    "not a row": (lambda s, lines: _body(s, lines, dump({"table": "keys"})), "line 2 is not a row"),
    "unknown value": (
        lambda s, lines: _body(s, lines, dump({"table": "keys", "row": {"key_id": {"x": 1}}})),
        "line 2 holds a value kms cannot read",
    ),
    "time without a zone": (
        lambda s, lines: _body(
            s, lines, dump({"table": "keys", "row": {"key_id": {"time": "2026-01-01T00:00:00"}}})
        ),
        "line 2 holds a value kms cannot read",
    ),
    "list value": (
        lambda s, lines: _body(s, lines, dump({"table": "keys", "row": {"key_id": [1]}})),
        "line 2 holds a value kms cannot read",
    ),
    "unknown table": (
        lambda s, lines: _body(s, lines, dump({"table": "nope", "row": {}})),
        "the backup's nope rows do not match this kms's schema",
    ),
    "no keystore": (_without_keystore, "the backup holds no keystore"),
    "unreadable KDF parameters": (_unreadable_kdf_parameters, "the backup's "),
    "no schema revision": (
        _header(lambda header: header.pop("schema")),
        "the backup names no schema revision",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_each_check_names_its_cause(
    initialised: Settings, backup: list[bytes], damage: str
) -> None:
    make, cause = DAMAGE[damage]
    with pytest.raises(InvalidBackup) as refused:
        verify(initialised, make(initialised, backup))
    assert cause in refused.value.public_message


def test_a_backup_of_another_schema_revision_is_refused_and_nothing_is_written(
    initialised: Settings, backup: list[bytes], tmp_path: Path
) -> None:
    """docs/operations.md: restore checks the schema revision last: "restore with the kms release
    that took the backup, then `kms upgrade`"."""
    header = json.loads(backup[0])
    header["schema"] = "0001"
    source = tmp_path / "older.backup"
    source.write_bytes(retag(initialised, [dump(header), *backup[1:-1]]))
    target = tmp_path / "restored"
    target.mkdir()
    restored = dataclasses.replace(initialised, database_dsn=str(target / "kms.db"))
    with pytest.raises(InvalidBackup, match="taken at schema revision 0001"):
        restore_database(restored, source)
    assert list(target.iterdir()) == []


# -- a format-3 file's cleartext header, and what only the passphrase opens ---------------------


def _sealed_field(name: str, value: Callable[[str], str]) -> Callable[[dict], None]:
    def change(header: dict) -> None:
        header["sealed"][name] = value(header["sealed"][name])

    return change


HEADER_DAMAGE: dict[str, tuple[Callable[[dict], None], str]] = {
    # The characters a lenient decoder would drop: the value underneath is the right one.
    "a sealed row not strict base64": (
        _sealed_field("root_secret", lambda value: value[:8] + "*" + value[8:]),
        "the backup's header has no valid root_secret; nothing was written",
    ),
    "a salt of another length": (
        lambda header: header.update(salt=base64.b64encode(bytes(8)).decode()),
        "the backup's header has no valid keystore_id or salt",
    ),
    "an empty keystore id": (
        lambda header: header.update(keystore_id=""),
        "the backup's header has no valid keystore_id or salt",
    ),
    "no sealed root secret": (
        lambda header: header["sealed"].pop("root_secret"),
        "the backup's header has no sealed root secret",
    ),
    "a sealed root secret of no backend": (
        _sealed_field("root_secret", lambda value: base64.b64encode(b"\x09" * 61).decode()),
        "the backup's root secret does not open: ",
    ),
}


@pytest.mark.parametrize("damage", list(HEADER_DAMAGE))
def test_each_check_of_the_cleartext_header_names_its_cause(
    initialised: Settings, tmp_path: Path, damage: str
) -> None:
    """The header is the associated data of every chunk, so any edit of it fails to decrypt
    too; each check before that says what is wrong with it instead."""
    target = tmp_path / "kms.backup"
    backup_database(initialised, target)
    header_line, _, rest = target.read_bytes().partition(b"\n")
    header = json.loads(header_line)
    change, cause = HEADER_DAMAGE[damage]
    change(header)
    with pytest.raises(InvalidBackup) as refused:
        verify(initialised, dump(header) + b"\n" + rest)
    assert cause in refused.value.public_message


def _other_marker(settings: Settings, lines: list[bytes]) -> bytes:
    changed = []
    for line in lines[1:-1]:
        row = json.loads(line)
        if row["table"] == "kms_metadata" and row["row"]["name"] == "init_marker":
            row["row"]["value"] = {"b64": base64.b64encode(os.urandom(60)).decode()}
            line = dump(row)
        changed.append(line)
    return retag(settings, [lines[0], *changed])


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda s, lines: retag(s, [b"{nope", *lines[1:-1]]), "line 1 is not JSON"),
        (_other_marker, "the passphrase is not the one it was taken under"),
    ],
    ids=["document header not JSON", "init marker of another keystore"],
)
def test_each_check_inside_the_encryption_names_its_cause(
    initialised: Settings, backup: list[bytes], make: Callable[..., bytes], cause: str
) -> None:
    """Sealed again under the keystore's own keys (and tagged again): the document's own first
    line, and the init marker checked against the passphrase before the tag."""
    with pytest.raises(InvalidBackup) as refused:
        verify(initialised, make(initialised, backup))
    assert cause in refused.value.public_message


def test_a_checked_backup_keeps_no_keyring_unless_asked(
    initialised: Settings, tmp_path: Path
) -> None:
    """Only ``kms restore --as-clone`` needs the backup's keyring after the check; otherwise it
    is closed before the rows are handed over."""
    target = tmp_path / "kms.backup"
    backup_database(initialised, target)
    with master_key_backend(initialised, bytearray(TEST_PASSPHRASE)) as backend:
        checked = verify_backup(
            target.read_bytes(),
            backend,
            columns=lambda table: column_names(table) if table in table_names() else None,
        )
    assert checked.keyring is None and checked.rows


def test_a_keystore_row_changed_while_the_backup_is_taken_is_refused(
    initialised: Settings,
) -> None:
    """docs/operations.md: ``kms backup`` runs while servers (and a ``kms rekey``) may write; a
    keystore row of the snapshot that is not the one read before it (a rekey in between, or a
    backend's row that appeared) stops the backup."""
    repository = SQLKeyRepository(create_kms_engine(initialised.database_url, pool=False))
    try:
        metadata = repository.read_metadata()
    finally:
        repository.close()
    keyring = open_master_keyring(initialised)
    try:
        sealed = sealed_rows(metadata)
        for name, value in [
            ("root_secret", metadata["root_secret"][:-1] + b"\x00"),
            ("keystore_id", bytes(16)),
        ]:
            writer = BackupWriter(keyring, sealed)
            with pytest.raises(BackupError, match="rekeyed while the backup was taken"):
                writer.row("kms_metadata", {"name": name, "value": value})
        writer = BackupWriter(keyring, {"root_secret": metadata["root_secret"]})
        with pytest.raises(BackupError, match="rekeyed while the backup was taken"):
            writer.row("kms_metadata", {"name": "kdf_parameters", "value": b"$pbkdf2"})
        writer = BackupWriter(keyring, sealed)  # the same row passes
        writer.row("kms_metadata", {"name": "root_secret", "value": metadata["root_secret"]})
    finally:
        keyring.close()
