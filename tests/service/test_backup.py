"""``kms backup`` and ``kms restore`` (kms.master) on real SQLite files and real PostgreSQL."""

from __future__ import annotations

import base64
import dataclasses
import json
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import kms.service.backup
from kms.backups import backup_database, restore_database
from kms.errors import DatabaseNotEmpty, InvalidBackup
from kms.master import check_database, init_database, open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.backups import chunks
from tests.helpers.keystore import make_service, make_settings, write_passphrase_file

Made = list[tuple[str, str, bytes]]


def open_service(settings: Settings) -> tuple[KMSService, Callable[[], None]]:
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))

    def close() -> None:
        repository.close()
        keyring.close()

    return make_service(repository, keyring, KeyMaterialCache(64)), close


def fill(settings: Settings) -> Made:
    service, close = open_service(settings)
    try:
        made: Made = []
        for index in range(3):
            key_id = f"enc-{index}"
            service.create_key(key_id, max_encryptions_per_version=5, rotation_period="7d")
            for count in range(8):
                plaintext = f"{key_id}/{count}".encode()
                made.append((key_id, service.encrypt(key_id, plaintext).ciphertext, plaintext))
        service.create_key("sig", purpose="sign", algorithm="ECDSA-P256")
        service.rotate_key("sig")
        fill_key_states(service, made)
        return made
    finally:
        close()


def fill_key_states(service: KMSService, made: Made) -> None:
    """Keys with issue 8's fields set (metadata, version policy, a trim, scheduled deletion)
    beside issue 11's: a backup must carry every column, and the restored rows' MACs cover them."""
    service.create_key(
        "meta", description="invoices", labels={"team": "billing"}, rotation_period="30d"
    )
    for version in (1, 2, 3):
        plaintext = f"meta/{version}".encode()
        if version > 1:
            made.append(("meta", service.encrypt("meta", plaintext).ciphertext, plaintext))
        service.rotate_key("meta")
    service.update_key(
        "meta", min_decryption_version=2, deletion_allowed=False, max_encryptions_per_version=9
    )
    service.trim_key("meta", min_available_version=2)
    service.create_key("doomed", labels={"team": "gone"})
    service.delete_key("doomed", pending_days=7)


def assert_key_states(service: KMSService) -> None:
    meta = service.get_key("meta")
    assert (meta.description, meta.labels, meta.state) == (
        "invoices",
        {"team": "billing"},
        "enabled",
    )
    assert (meta.version, meta.min_decryption_version, meta.min_available_version) == (4, 2, 2)
    assert (meta.deletion_allowed, meta.rotation_period, meta.max_encryptions_per_version) == (
        False,
        "30d",
        9,
    )
    assert [v.version for v in meta.key_versions] == [2, 3, 4]
    doomed = service.get_key("doomed")
    assert (doomed.state, doomed.labels) == ("pending_deletion", {"team": "gone"})
    assert doomed.pending_deletion_at is not None


def assert_decrypts(settings: Settings, made: Made) -> None:
    assert check_database(settings).failures == []
    service, close = open_service(settings)
    try:
        for key_id, ciphertext, plaintext in made:
            assert service.decrypt(key_id, ciphertext).plaintext == plaintext
        assert service.get_key("enc-0").rotation_period == "7d"
        assert_key_states(service)
        assert service.verify("sig", b"m", service.sign("sig", b"m").signature).valid
    finally:
        close()


def fresh(settings: Settings, directory: Path, dsn: str | None = None) -> Settings:
    directory.mkdir(exist_ok=True)
    return dataclasses.replace(settings, database_dsn=dsn or str(directory / "restored.db"))


def test_backup_under_load_restores_every_ciphertext_acknowledged_before_it(
    initialised: Settings, tmp_path: Path
) -> None:
    made = fill(initialised)
    service, close = open_service(initialised)
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            while not stop.is_set():
                service.encrypt("enc-1", b"during the backup")
                service.rotate_key("enc-2")
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        acknowledged = list(made)  # every ciphertext above was answered before the backup
        target = tmp_path / "kms.backup"
        result = backup_database(initialised, target)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        close()
    assert errors == []
    assert result.rows > 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    restored = fresh(initialised, tmp_path / "restored")
    assert restore_database(restored, target) == result.rows
    assert_decrypts(restored, acknowledged)


DAMAGE = [
    "truncated",
    "cut at a chunk",
    "edited",
    "reordered",
    "dropped",
    "repeated",
    "appended",
    "header: salt",
    "header: keystore id",
    "header: iterations",
]


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_backup_is_refused_and_nothing_is_written(
    initialised: Settings, tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each change to the encrypted file, by someone without the passphrase: nothing opens."""
    monkeypatch.setattr(kms.service.backup, "CHUNK_BYTES", 512)  # many chunks
    fill(initialised)
    target = tmp_path / "kms.backup"
    backup_database(initialised, target)
    data = target.read_bytes()
    header, sealed = chunks(data)
    assert len(sealed) > 4
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "cut at a chunk":
        data = header + b"".join(sealed[:-1])
    elif damage == "edited":  # one bit of the second chunk's ciphertext
        second = bytearray(sealed[1])
        second[20] ^= 1
        data = header + sealed[0] + bytes(second) + b"".join(sealed[2:])
    elif damage == "reordered":
        data = header + b"".join([sealed[0], sealed[2], sealed[1], *sealed[3:]])
    elif damage == "dropped":
        data = header + b"".join([sealed[0], *sealed[2:]])
    elif damage == "repeated":
        data = header + b"".join([sealed[0], sealed[0], *sealed[1:]])
    elif damage == "appended":
        data += sealed[-1]
    else:
        fields = json.loads(header)
        if damage == "header: salt":
            fields["salt"] = base64.b64encode(bytes(32)).decode()
        elif damage == "header: keystore id":
            fields["keystore_id"] = base64.b64encode(bytes(16)).decode()
        else:
            kdf = base64.b64decode(fields["sealed"]["kdf_parameters"])
            fields["sealed"]["kdf_parameters"] = base64.b64encode(
                kdf.replace(b"$i=", b"$i=1")
            ).decode()
        data = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        data += b"".join(sealed)
    target.write_bytes(data)
    restored = fresh(initialised, tmp_path / "restored")
    with pytest.raises(InvalidBackup, match="nothing was written"):
        restore_database(restored, target)
    assert list((tmp_path / "restored").iterdir()) == []


def test_a_backup_of_another_keystore_is_refused(initialised: Settings, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = dataclasses.replace(
        make_settings(tmp_path / "other"),
        master_passphrase_file=write_passphrase_file(
            tmp_path / "other" / "p", b"another keystore's passphrase"
        ),
    )
    init_database(other)
    fill(other)
    foreign = tmp_path / "foreign.backup"
    backup_database(other, foreign)
    restored = fresh(initialised, tmp_path / "restored")  # this keystore's passphrase
    with pytest.raises(InvalidBackup, match="another keystore"):
        restore_database(restored, foreign)
    assert list((tmp_path / "restored").iterdir()) == []


def test_restore_refuses_a_database_that_is_not_empty(
    initialised: Settings, tmp_path: Path
) -> None:
    fill(initialised)
    target = tmp_path / "kms.backup"
    backup_database(initialised, target)
    before = Path(initialised.database_dsn).read_bytes()
    with pytest.raises(DatabaseNotEmpty, match="nothing was changed"):
        restore_database(initialised, target)
    assert Path(initialised.database_dsn).read_bytes() == before


def test_backup_never_overwrites_a_file(initialised: Settings, tmp_path: Path) -> None:
    target = tmp_path / "kms.backup"
    target.write_bytes(b"precious")
    with pytest.raises(Exception, match="refusing to overwrite"):
        backup_database(initialised, target)
    assert target.read_bytes() == b"precious"


def test_sqlite_to_postgresql_and_back(
    initialised: Settings, tmp_path: Path, postgres_url: str
) -> None:
    made = fill(initialised)
    first = tmp_path / "from-sqlite.backup"
    backup_database(initialised, first)
    on_postgres = fresh(initialised, tmp_path / "pg", dsn=postgres_url)
    restore_database(on_postgres, first)
    assert_decrypts(on_postgres, made)

    service, close = open_service(on_postgres)
    try:
        later = b"made on PostgreSQL"
        made.append(("enc-0", service.encrypt("enc-0", later).ciphertext, later))
    finally:
        close()
    second = tmp_path / "from-postgres.backup"
    backup_database(on_postgres, second)
    back = fresh(initialised, tmp_path / "back")
    restore_database(back, second)
    assert_decrypts(back, made)
