"""Destroyed means destroyed (docs/security.md, "Destroyed material"): once a destroy, a trim, a
recreate or ``kms rekey`` returns, the wrapped keys it removed or replaced are in no file of the
database: not the SQLite file or its ``-wal``, not any relation file of the PostgreSQL database.

The attacker reads the files as root, byte for byte, and looks for each wrapped key exactly as
the database stored it (and, after a rekey, the old init marker and KDF parameters). SQLite runs
as upstream builds it (``secure_delete`` off by default; Debian turns it on at compile time):
an extra connect hook, run before kms's own, turns it off, and kms must turn it on again.
PostgreSQL's buffers are flushed with ``CHECKPOINT`` first, as the superuser, so that what the
server holds in memory is in the files too. PostgreSQL's own WAL (``pg_wal``) is not searched:
it keeps everything until it is recycled, as docs/security.md says.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

import kms.master
from kms.rekey import rekey_database
from kms.service.cache import KeyMaterialCache
from kms.service.keys import KMSService
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import Store, make_service
from tests.helpers.machine import unavailable


def as_upstream_builds_it(engine: Engine) -> Engine:
    """``engine``, with SQLite's ``secure_delete`` off on each new connection before kms's own
    settings run: what a SQLite built with upstream's defaults starts with."""
    if engine.dialect.name == "sqlite":

        def upstream_default(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA secure_delete=OFF")

        event.listen(engine, "connect", upstream_default, insert=True)
    return engine


def service_of(store: Store) -> KMSService:
    engine = as_upstream_builds_it(create_kms_engine(store.settings.database_url))
    repository = SQLKeyRepository(engine)
    store.repositories.append(repository)
    return make_service(repository, store.keyring, KeyMaterialCache(0))


def _superuser_psql(query: str) -> str:
    if shutil.which("runuser") is None or shutil.which("psql") is None:
        unavailable("reading PostgreSQL's files needs runuser and psql")
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-XAtqc", query],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        unavailable(f"reading PostgreSQL's files needs root and its superuser: {done.stderr}")
    return done.stdout.strip()


def database_files(store: Store) -> list[Path]:
    """Every file of the database as it is on disk now: the SQLite file and its ``-wal``, or
    every relation file of the PostgreSQL database (tables, indexes, TOAST, free space maps)."""
    if store.engine.dialect.name == "sqlite":
        path = Path(store.settings.database_dsn)
        return [p for p in (path, path.with_name(path.name + "-wal")) if p.exists()]
    with store.engine.connect() as conn:
        oid = conn.execute(
            text("SELECT oid FROM pg_database WHERE datname = current_database()")
        ).scalar_one()
    _superuser_psql("CHECKPOINT")
    directory = Path(_superuser_psql("SHOW data_directory")) / "base" / str(oid)
    return [path for path in directory.iterdir() if path.is_file()]


def found_in_files(store: Store, secrets: list[bytes]) -> list[str]:
    """Which of ``secrets`` (by index) some database file holds, and where."""
    found = []
    for path in database_files(store):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            # PostgreSQL removed it between the listing and the read (a relation rewritten by
            # VACUUM FULL, or pg_internal.init dropped by a relcache invalidation): a file
            # that is gone holds nothing.
            continue
        found += [f"secret {index} in {path.name}" for index, s in enumerate(secrets) if s in data]
    return found


#: PostgreSQL: how many more reclaims may run before what the files hold counts (below).
MORE_RECLAIMS = 20


def table_files(store: Store) -> dict[str, int]:
    """PostgreSQL: the file node of each table a reclaim rewrites (``VACUUM FULL`` gives the
    table a new one, whatever rows a horizon keeps in it); SQLite: none (its reclaim is a
    checkpoint of the whole database)."""
    if store.engine.dialect.name != "postgresql":
        return {}
    node = text("SELECT pg_relation_filenode(CAST(:name AS regclass))")
    with store.engine.connect() as conn:
        return {
            table: conn.execute(node, {"name": table}).scalar_one()
            for table in ("key_versions", "kms_metadata")
        }


def left_in_files(
    store: Store,
    secrets: list[bytes],
    before: dict[str, int],
    rewritten: tuple[str, ...] = ("key_versions",),
) -> list[str]:
    """What of ``secrets`` the files still hold after the change's own reclaim, and on
    PostgreSQL after at most ``MORE_RECLAIMS`` more, as the next destroy, trim, recreate,
    destroy-due or rekey would run them. The documented gap (kms/store/reclaim.py): VACUUM FULL
    keeps a deleted row that a transaction open at that moment may still see, and a connection
    being set up anywhere on the cluster holds the horizon back for an instant (the parallel
    tests open many); such a row goes at a later reclaim. A reclaim that never clears it fails.

    Those later reclaims cover every table (``keystore=True``), so on their own they would do
    the change's work for it: first, each table in ``rewritten`` must have been rewritten by
    the change itself (a new file node since ``before``, taken by ``table_files``); one that
    was not is named in the answer."""
    after = table_files(store)
    kept = [
        f"{table} not rewritten" for table in rewritten if before and after[table] == before[table]
    ]
    if kept:
        return kept
    found = found_in_files(store, secrets)
    more = 0
    while found and store.engine.dialect.name == "postgresql" and more < MORE_RECLAIMS:
        SQLKeyRepository(store.engine).reclaim_destroyed(keystore=True)
        more += 1
        found = found_in_files(store, secrets)
    return found


def wrapped_keys(store: Store, key_id: str, below: int | None = None) -> list[bytes]:
    rows = store.rows(
        "SELECT wrapped_key FROM key_versions WHERE key_id = :key_id AND version < :below",
        key_id=key_id,
        below=below if below is not None else 2**31 - 1,
    )
    assert rows
    return [bytes(row[0]) for row in rows]


def test_a_destroyed_key_leaves_no_wrapped_key_in_the_database_files(store: Store) -> None:
    service = service_of(store)
    service.create_key("kept")
    service.create_key("doomed")
    service.rotate_key("doomed")
    gone = wrapped_keys(store, "doomed")
    assert found_in_files(store, gone), "the search must see the rows while they exist"
    before = table_files(store)
    service.delete_key("doomed")
    assert left_in_files(store, gone, before) == []
    assert found_in_files(store, wrapped_keys(store, "kept"))  # the live rows are still there


def test_trimmed_versions_leave_no_wrapped_key_in_the_database_files(store: Store) -> None:
    service = service_of(store)
    service.create_key("trimmed")
    for _ in range(3):
        service.rotate_key("trimmed")
    service.update_key("trimmed", min_decryption_version=3)
    gone = wrapped_keys(store, "trimmed", below=3)
    before = table_files(store)
    service.trim_key("trimmed", min_available_version=3)
    assert left_in_files(store, gone, before) == []


def test_a_recreated_key_leaves_no_old_wrapped_key_in_the_database_files(store: Store) -> None:
    service = service_of(store)
    service.create_key("recreated")
    service.rotate_key("recreated")
    gone = wrapped_keys(store, "recreated")
    before = table_files(store)
    service.recreate_key("recreated")
    assert left_in_files(store, gone, before) == []


def test_after_rekey_nothing_the_old_passphrase_opens_is_in_the_database_files(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old wrapped keys, the old init marker and the old KDF parameters (its salt): with
    them, the old passphrase would still unwrap every key."""
    service = service_of(store)
    for index in range(5):
        service.create_key(f"enc-{index}")
        service.rotate_key(f"enc-{index}")
    old = [bytes(row[0]) for row in store.rows("SELECT wrapped_key FROM key_versions")]
    old += [
        bytes(row[0])
        for row in store.rows(
            "SELECT value FROM kms_metadata WHERE name IN ('init_marker', 'kdf_parameters')"
        )
    ]
    assert len(old) == 12
    for repository in store.repositories:
        repository.close()
    store.repositories.clear()

    def upstream_engine(*args: Any, **options: Any) -> Engine:
        return as_upstream_builds_it(create_kms_engine(*args, **options))

    monkeypatch.setattr(kms.master, "create_kms_engine", upstream_engine)
    # Another process's idle connection (a monitor, a kms check): SQLite's last close would
    # otherwise checkpoint and remove the -wal file by itself.
    before = table_files(store)
    with store.engine.connect():
        rekey_database(store.settings, bytearray(b"the new passphrase, long enough"))
        assert left_in_files(store, old, before, ("key_versions", "kms_metadata")) == []


def test_every_sqlite_connection_has_secure_delete_on(tmp_path: Path) -> None:
    engine = as_upstream_builds_it(create_kms_engine(f"sqlite:///{tmp_path / 'kms.db'}"))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA secure_delete").scalar_one() == 1
    finally:
        engine.dispose()


def test_keys_destroyed_by_destroy_due_leave_no_wrapped_key_in_the_database_files(
    store: Store,
) -> None:
    service = service_of(store)
    gone = []
    for index in range(3):
        service.create_key(f"due-{index}")
        gone += wrapped_keys(store, f"due-{index}")
        service.delete_key(f"due-{index}", pending_days=1)
    later = datetime.now(UTC) + timedelta(days=2)
    before = table_files(store)
    assert sorted(service.destroy_due(now=later)) == ["due-0", "due-1", "due-2"]
    assert left_in_files(store, gone, before) == []


def test_a_reader_in_the_way_delays_the_reclaim_to_the_next_one(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader holding its snapshot (a ``kms backup`` under way) outlasts the reclaim's wait:
    the destroy still succeeds, a warning says what is left, and the next reclaim clears it."""
    service = service_of(store)
    service.create_key("first")
    service.create_key("second")
    first = wrapped_keys(store, "first")
    with store.engine.connect() as reader:
        if store.engine.dialect.name == "sqlite":
            reader.exec_driver_sql("BEGIN")
        reader.execute(text("SELECT count(*) FROM key_versions")).scalar_one()
        with caplog.at_level(logging.WARNING, logger="kms.store"):
            service.delete_key("first")
        assert "destroyed rows" in caplog.text
    # The reader is gone (its snapshot with it): the next destroy clears both keys' rows.
    before = table_files(store)
    service.delete_key("second")
    assert left_in_files(store, first, before) == []
