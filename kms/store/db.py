"""Engine construction.

SQLite (the embedded default) runs in WAL mode with foreign keys on, ``secure_delete`` on and a
busy timeout, and every
write transaction starts with ``BEGIN IMMEDIATE``: the write lock is taken at the start, so two
writers queue on the busy timeout instead of one failing with "database is locked" when it tries
to upgrade a read lock. Nothing here is SQLite-only beyond those connection settings.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_SECONDS = 30
WRITE = {"kms_write": True}
#: How often a server worker checkpoints the SQLite write-ahead log (``WALCheckpointer``).
CHECKPOINT_INTERVAL_SECONDS = 1.0
#: With background checkpoints, the log size at which a commit checkpoints anyway (SQLite's own
#: default is 1,000 pages).
SAFETY_NET_CHECKPOINT_PAGES = 10_000

log = logging.getLogger("kms.store")


def beside_sqlite_database(url: str, suffix: str) -> Path | None:
    """``<database><suffix>``, a file beside a SQLite database file; None for any other
    database (PostgreSQL, an in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    database = Path(parsed.database)
    return database.with_name(database.name + suffix)


def create_kms_engine(
    url: str,
    *,
    pool: bool = True,
    application_name: str | None = None,
    background_checkpoints: bool = False,
) -> Engine:
    """Build the engine for ``url``; statement parameters never appear in errors or logs.

    ``application_name`` names the connections on PostgreSQL (kms.store.serving).
    ``background_checkpoints``: SQLite's commits leave checkpoints of the write-ahead log to a
    ``WALCheckpointer`` running beside the engine (a server worker's), unless the log grows
    ten times past SQLite's default threshold.
    """
    options: dict[str, Any] = {"hide_parameters": True}
    if not pool:
        options["poolclass"] = NullPool
    if url.startswith("sqlite"):
        options["connect_args"] = {
            "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
            "check_same_thread": False,
        }
        engine = create_engine(url, **options)
        _configure_sqlite(engine, autocheckpoint=not background_checkpoints)
        return engine
    options["pool_pre_ping"] = True
    if application_name is not None and url.startswith("postgresql"):
        options["connect_args"] = {"application_name": application_name}
    return create_engine(url, **options)


def _configure_sqlite(engine: Engine, *, autocheckpoint: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # journal_mode=WAL is set once, by `kms init` (use_write_ahead_log), and persists in the
        # file; setting it here would rewrite any SQLite file kms is pointed at by mistake.
        cursor.execute("PRAGMA foreign_keys=ON")
        # Deleted and overwritten rows become zeros in the page instead of staying readable in
        # its free space (upstream SQLite's default is off; kms.store.reclaim).
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        # LIKE as on PostgreSQL: the key listing's scope is a case-sensitive glob
        # (kms.store.patterns).
        cursor.execute("PRAGMA case_sensitive_like=ON")
        if not autocheckpoint:
            # Not 0: should the checkpointer fail for good, a commit still checkpoints once
            # the log passes about 40 MB (10,000 pages of 4 KiB) instead of letting it grow.
            cursor.execute(f"PRAGMA wal_autocheckpoint={SAFETY_NET_CHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Reads are single statements, each its own implicit transaction in autocommit mode:
        # an explicit BEGIN and ROLLBACK around them would only add two round trips.
        if connection.get_execution_options().get("kms_write"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def use_write_ahead_log(engine: Engine) -> None:
    """Switch a SQLite database to WAL (readers never wait for the writer); a no-op elsewhere."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")


class WALCheckpointer:
    """A daemon thread that checkpoints a SQLite database's write-ahead log every ``interval``.

    By default the commit that takes the log past 1,000 pages copies them into the database file
    and syncs it, while it still holds the write lock: on a large database (``make bench``'s
    million keys, where each commit dirties pages all over the file) that stalled every writer of
    the node for up to 200 ms about once a second, and writes made in-process measured 30% slower
    on average. Here the copy and the sync happen beside the writers instead (a ``PASSIVE``
    checkpoint waits for nobody and nobody waits for it), on one of the engine's connections.
    A failed checkpoint is logged once and tried again at the next interval.
    """

    def __init__(self, engine: Engine, interval: float = CHECKPOINT_INTERVAL_SECONDS) -> None:
        self._engine = engine
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        #: The last checkpoint the thread made: (busy, frames in the log, frames checkpointed).
        self.last: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return "WALCheckpointer()"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kms-wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._interval + 30)

    def checkpoint(self) -> tuple[int, int, int]:
        """One ``PASSIVE`` checkpoint: (busy, frames in the log, frames checkpointed)."""
        with self._engine.connect() as conn:
            busy, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        return busy, frames, copied

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.last = self.checkpoint()
                self._failing = False
            except Exception as error:  # a checkpoint failing must not end the thread
                if not self._failing:
                    log.warning(
                        "kms: checkpoint of the SQLite write-ahead log failed (%s); retrying",
                        type(error).__name__,
                    )
                self._failing = True
