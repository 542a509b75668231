"""Engine construction.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout, and every
write transaction starts with ``BEGIN IMMEDIATE``: the write lock is taken at the start, so two
writers queue on the busy timeout instead of one failing with "database is locked" when it tries
to upgrade a read lock. Nothing here is SQLite-only beyond those connection settings.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_SECONDS = 30
WRITE = {"kms_write": True}


def create_kms_engine(
    url: str, *, pool: bool = True, application_name: str | None = None
) -> Engine:
    """Build the engine for ``url``; statement parameters never appear in errors or logs.

    ``application_name`` names the connections on PostgreSQL (kms.store.serving).
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
        _configure_sqlite(engine)
        return engine
    options["pool_pre_ping"] = True
    if application_name is not None and url.startswith("postgresql"):
        options["connect_args"] = {"application_name": application_name}
    return create_engine(url, **options)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # journal_mode=WAL is set once, by `kms init` (use_write_ahead_log), and persists in the
        # file; setting it here would rewrite any SQLite file kms is pointed at by mistake.
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
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
