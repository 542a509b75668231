"""``kms destroy-due`` from the command line: two processes started together on 50 due keys
destroy each exactly once, on SQLite and PostgreSQL; a row whose deadline was moved behind kms's
back is named, left alone, and the exit status is 1.

Production KDF cost: the command reads a config file, which cannot lower the floor. The deletion
windows pass without anyone waiting: the keys are scheduled through the service with its clock
set days back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kms.master import init_database, open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.records import utc_now
from kms.store.repository import SQLKeyRepository
from tests.helpers.config import write_config
from tests.helpers.harness import COMMAND_TIMEOUT_SECONDS, run_kms, start_kms
from tests.helpers.keystore import TEST_PASSPHRASE, make_service, write_passphrase_file

pytestmark = pytest.mark.slow

DUE_KEYS = 50


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """An initialised keystore at the production KDF cost, on SQLite or PostgreSQL."""
    dsn = (
        str(tmp_path / "kms.db")
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    settings = Settings(
        database_dsn=dsn,
        master_passphrase_file=write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE),
    )
    init_database(settings)
    return settings


@contextmanager
def services(settings: Settings, days_ago: int) -> Iterator[tuple[KMSService, KMSService]]:
    """A service on the keystore, and one whose clock is ``days_ago`` days back."""
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    try:
        yield (
            make_service(repository, keyring, KeyMaterialCache(0)),
            make_service(
                repository,
                keyring,
                KeyMaterialCache(0),
                clock=lambda: utc_now() - timedelta(days=days_ago),
            ),
        )
    finally:
        repository.close()
        keyring.close()


def key_ids(settings: Settings, table: str) -> set[str]:
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(text(f"SELECT key_id FROM {table}"))}  # noqa: S608
    finally:
        engine.dispose()


def destroyed_by(stdout: str) -> list[str]:
    return [line.split()[2] for line in stdout.splitlines() if line.startswith("kms: destroyed ")]


def test_two_destroy_due_processes_destroy_each_of_50_due_keys_exactly_once(
    settings: Settings, tmp_path: Path
) -> None:
    due = sorted(f"race-{index:02d}" for index in range(DUE_KEYS))
    with services(settings, days_ago=2) as (service, in_the_past):
        for key_id in [*due, "race-keeper"]:
            service.create_key(key_id)
        for key_id in due:
            scheduled = in_the_past.delete_key(key_id, pending_days=1)
            assert scheduled is not None and scheduled.state == "pending_deletion"
        service.delete_key("race-keeper", pending_days=1)  # not yet due
    config = write_config(
        tmp_path / "config.yaml",
        passphrase_file=settings.master_passphrase_file,
        dsn=settings.database_dsn,
    )

    processes = [start_kms("destroy-due", config=config) for _ in range(2)]
    results = [process.communicate(timeout=COMMAND_TIMEOUT_SECONDS) for process in processes]
    for process, (stdout, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, (stdout, stderr)
        assert "Traceback" not in stdout + stderr
    first, second = (destroyed_by(stdout) for stdout, _ in results)
    assert not set(first) & set(second), (first, second)
    assert sorted(first + second) == due
    for (stdout, _), mine in zip(results, (first, second), strict=True):
        assert f"kms: {len(mine)} keys destroyed in " in stdout

    assert key_ids(settings, "keys") == {"race-keeper"}
    assert key_ids(settings, "key_versions") == {"race-keeper"}
    with services(settings, days_ago=0) as (service, _):
        assert service.get_key("race-keeper").state == "pending_deletion"

    again = run_kms("destroy-due", config=config)
    assert again.returncode == 0, again.stderr
    assert destroyed_by(again.stdout) == []
    assert "kms: 0 keys destroyed in " in again.stdout


def test_destroy_due_names_a_tampered_row_leaves_it_and_exits_1(tmp_path: Path) -> None:
    """The command, on a database whose pending key had its deadline moved behind kms's back."""
    settings = Settings(
        database_dsn=str(tmp_path / "kms.db"),
        master_passphrase_file=write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE),
    )
    init_database(settings)
    with services(settings, days_ago=5) as (service, in_the_past):
        for key_id in ("honest", "tampered"):
            service.create_key(key_id)
        in_the_past.delete_key("honest", pending_days=1)
        service.delete_key("tampered", pending_days=30)
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE keys SET pending_deletion_at = :at WHERE key_id = 'tampered'"),
            {"at": utc_now() - timedelta(days=1)},
        )
    engine.dispose()
    config = write_config(
        tmp_path / "config.yaml",
        passphrase_file=settings.master_passphrase_file,
        dsn=settings.database_dsn,
    )

    result = run_kms("destroy-due", config=config, cwd=tmp_path)
    assert result.returncode == 1, result
    assert destroyed_by(result.stdout) == ["honest"]
    assert "kms: NOT destroyed tampered: key 'tampered': key row: MAC does not match" in (
        result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert key_ids(settings, "keys") == {"tampered"}
