"""``kms rekey`` (kms.rekey.rekey_database) on real SQLite files.

The kill test runs the rekey in a child process that SIGKILLs itself after K re-wrapped versions,
inside the transaction: no hook in kms stops it, the kernel does.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kms.errors import DatabaseInUse, WrongPassphrase
from kms.master import check_database, init_database, open_master_keyring
from kms.rekey import rekey_database
from kms.service.cache import KeyMaterialCache
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from kms.store.serving import SERVER_APPLICATION_NAME, hold_serving_lock
from tests.helpers.keystore import make_service, write_passphrase_file

NEW_PASSPHRASE = b"a new and longer passphrase for the master key"


def with_passphrase(settings: Settings, path: Path) -> Settings:
    return dataclasses.replace(settings, master_passphrase_file=path)


def fill(settings: Settings) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, bytes, bytes]]]:
    """Keys with several versions; ciphertexts and signatures made under every version."""
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(0))
        ciphertexts, signatures = [], []
        for index in range(4):
            service.create_key(f"enc-{index}")
            service.create_key(f"sig-{index}", purpose="sign", algorithm="Ed25519")
            for _ in range(3):
                message = os.urandom(20)
                ciphertexts.append(
                    (f"enc-{index}", service.encrypt(f"enc-{index}", message).ciphertext, message)
                )
                signatures.append(
                    (f"sig-{index}", message, service.sign(f"sig-{index}", message).signature)
                )
                service.rotate_key(f"enc-{index}")
                service.rotate_key(f"sig-{index}")
        return ciphertexts, signatures
    finally:
        repository.close()
        keyring.close()


def assert_all_usable(settings: Settings, ciphertexts: list, signatures: list) -> None:
    assert check_database(settings).failures == []
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(0))
        for key_id, ciphertext, message in ciphertexts:
            assert service.decrypt(key_id, ciphertext).plaintext == message
        for key_id, message, signature in signatures:
            assert service.verify(key_id, message, signature).valid
        service.encrypt("enc-0", b"still works")
        service.rotate_key("sig-0")
    finally:
        repository.close()
        keyring.close()


def test_rekey_changes_the_passphrase_and_keeps_every_key(
    initialised: Settings, tmp_path: Path
) -> None:
    ciphertexts, signatures = fill(initialised)
    new_file = write_passphrase_file(tmp_path / "new.key", NEW_PASSPHRASE)
    result = rekey_database(initialised, bytearray(NEW_PASSPHRASE))
    assert (result.keys, result.versions) == (8, 32)
    with pytest.raises(WrongPassphrase):
        open_master_keyring(initialised)
    assert_all_usable(with_passphrase(initialised, new_file), ciphertexts, signatures)


def test_rekey_killed_half_way_leaves_the_old_passphrase_working(
    initialised: Settings, tmp_path: Path
) -> None:
    ciphertexts, signatures = fill(initialised)
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from tests.service.test_rekey import NEW_PASSPHRASE
        from kms.rekey import rekey_database
        from tests.helpers.keystore import make_settings

        class KillAfter:
            done = 0
            def start(self, total, label):
                assert total == 32
            def advance(self, count=1):
                self.done += count
                if self.done == 13:
                    os.kill(os.getpid(), signal.SIGKILL)

        settings = make_settings(Path({str(tmp_path)!r}))
        rekey_database(settings, bytearray(NEW_PASSPHRASE), KillAfter())
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parents[2], check=False
    )
    assert child.returncode == -signal.SIGKILL
    # The same settings (make_settings rewrote the same passphrase file): the old passphrase.
    assert_all_usable(initialised, ciphertexts, signatures)
    new_file = write_passphrase_file(tmp_path / "new.key", NEW_PASSPHRASE)
    with pytest.raises(WrongPassphrase):
        open_master_keyring(with_passphrase(initialised, new_file))


def test_rekey_refuses_while_a_server_holds_the_database(initialised: Settings) -> None:
    before = Path(initialised.database_dsn).read_bytes()
    fd = hold_serving_lock(initialised.database_url)
    try:
        with pytest.raises(DatabaseInUse, match="stop every kms server first"):
            rekey_database(initialised, bytearray(NEW_PASSPHRASE))
    finally:
        assert fd is not None
        os.close(fd)
    assert Path(initialised.database_dsn).read_bytes() == before
    open_master_keyring(initialised).close()  # the old passphrase still opens it


def test_rekey_re_macs_every_field_of_a_key(initialised: Settings, tmp_path: Path) -> None:
    """Issue 8's fields (metadata, version policy, a trim, scheduled deletion) and issue 11's
    (rotation period, use limit) are all under the re-made row MACs."""
    keyring = open_master_keyring(initialised)
    repository = SQLKeyRepository(create_kms_engine(initialised.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(0))
        service.create_key("meta", description="d", labels={"a": "b"}, rotation_period="12h")
        service.rotate_key("meta")
        kept = service.encrypt("meta", b"under version 2").ciphertext
        service.rotate_key("meta")
        service.update_key(
            "meta", min_decryption_version=2, deletion_allowed=False, max_encryptions_per_version=7
        )
        service.trim_key("meta", min_available_version=2)
        service.create_key("doomed")
        service.delete_key("doomed", pending_days=3)
        before = {key_id: service.get_key(key_id) for key_id in ("meta", "doomed")}
    finally:
        repository.close()
        keyring.close()
    new_file = write_passphrase_file(tmp_path / "new.key", NEW_PASSPHRASE)
    rekey_database(initialised, bytearray(NEW_PASSPHRASE))
    rekeyed = with_passphrase(initialised, new_file)
    assert check_database(rekeyed).failures == []
    keyring = open_master_keyring(rekeyed)
    repository = SQLKeyRepository(create_kms_engine(rekeyed.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(0))
        for key_id, info in before.items():
            assert service.get_key(key_id) == info
        assert service.decrypt("meta", kept).plaintext == b"under version 2"
    finally:
        repository.close()
        keyring.close()


def test_rekey_refuses_while_a_server_is_connected_to_the_postgres_database(
    initialised: Settings, postgres_url: str
) -> None:
    """docs/operations.md, `kms rekey`: on PostgreSQL every server connection is named
    `kms-server`, and `kms rekey` refuses while `pg_stat_activity` shows one on its database;
    once the server's connections are gone it proceeds. (A connection named so stands in for the
    server.)"""
    assert initialised.master_passphrase_file is not None
    on_postgres = dataclasses.replace(initialised, database_dsn=postgres_url)
    init_database(on_postgres)
    server = create_kms_engine(postgres_url, application_name=SERVER_APPLICATION_NAME)
    try:
        with server.connect():
            with pytest.raises(DatabaseInUse, match=r"1 kms server connection\(s\) are open"):
                rekey_database(on_postgres, bytearray(NEW_PASSPHRASE))
            open_master_keyring(on_postgres).close()  # nothing changed: the old passphrase
    finally:
        server.dispose()
    rekey_database(on_postgres, bytearray(NEW_PASSPHRASE))
    new_file = write_passphrase_file(
        initialised.master_passphrase_file.parent / "new.key", NEW_PASSPHRASE
    )
    open_master_keyring(with_passphrase(on_postgres, new_file)).close()
