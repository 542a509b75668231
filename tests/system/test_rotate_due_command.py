"""``kms rotate-due`` from the command line: two processes started together on 50 due keys rotate
each exactly once. Production KDF cost: a config file cannot lower the floor."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sqlalchemy import text

from kms.master import init_database, open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.harness import start_kms
from tests.helpers.keystore import TEST_PASSPHRASE, make_service, write_passphrase_file

DUE_KEYS = 50


def test_two_rotate_due_at_once_rotate_each_due_key_exactly_once(tmp_path: Path) -> None:
    settings = Settings(
        database_dsn=str(tmp_path / "kms.db"),
        master_passphrase_file=write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE),
    )
    init_database(settings)
    keyring = open_master_keyring(settings)
    engine = create_kms_engine(settings.database_url)
    try:
        service = make_service(SQLKeyRepository(engine), keyring, KeyMaterialCache(0))
        for index in range(DUE_KEYS):
            # Every fifth an RSA key: its rotation generates for a while before taking the row
            # lock, which keeps the two processes in step, racing for the same keys.
            algorithm = "RSA-2048" if index % 5 == 0 else "Ed25519"
            service.create_key(
                f"due-{index:02d}", purpose="sign", algorithm=algorithm, rotation_period="1h"
            )
        service.create_key("not-due", rotation_period="1h")
        service.create_key("no-period")
        with engine.begin() as conn:  # made two hours ago (version times are not MAC'd)
            conn.execute(
                text(
                    "UPDATE key_versions SET created_at = datetime('now', '-2 hours') "
                    "WHERE key_id LIKE 'due-%'"
                )
            )
    finally:
        engine.dispose()
        keyring.close()
    config = tmp_path / "config.yaml"
    config.write_text(
        f'kms:\n  master_passphrase_file: "{settings.master_passphrase_file}"\n'
        f'database:\n  dsn: "{settings.database_dsn}"\n',
        encoding="utf-8",
    )

    runs = [start_kms("rotate-due", config=config) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (_, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr
    lines = [line for stdout, _ in outputs for line in stdout.splitlines()]
    rotated = Counter(line for line in lines if line.startswith("kms: rotated "))
    assert rotated == Counter(f"kms: rotated due-{i:02d} to version 2" for i in range(DUE_KEYS))
    totals = sorted(line for line in lines if " keys rotated in " in line)
    assert sum(int(line.split()[1]) for line in totals) == DUE_KEYS
    print("rotated per process:", [line.split()[1] for line in totals])  # pytest -s shows it

    keyring = open_master_keyring(settings)
    engine = create_kms_engine(settings.database_url)
    try:
        service = make_service(SQLKeyRepository(engine), keyring, KeyMaterialCache(0))
        versions = {key.key_id: key.version for key in service.list_keys(limit=1000)}
        assert versions == {
            **{f"due-{i:02d}": 2 for i in range(DUE_KEYS)},
            "not-due": 1,
            "no-period": 1,
        }
        again = start_kms("rotate-due", config=config)
        stdout, stderr = again.communicate(timeout=120)
        assert again.returncode == 0, stderr
        assert stdout == f"kms: 0 keys rotated in {settings.database_dsn}\n"
    finally:
        engine.dispose()
        keyring.close()
