"""How the operator commands that must run alone (``kms rekey``, ``kms restore``) know that a
server is using the database.

- SQLite: gunicorn's master holds a shared ``flock`` on ``<database>.serving`` for as long as it
  runs (its workers inherit the open file, so the lock lasts until the last of them exits); a
  command that must run alone takes the lock exclusively without waiting, and refuses if it
  cannot. The kernel drops the lock when the processes die, so a crashed server never blocks.
- PostgreSQL: every server connection says ``application_name=kms-server``; the command counts
  such sessions on its database in ``pg_stat_activity``. A node whose workers have not yet opened
  a connection is not seen: stop every node first (docs/operations.md, `kms rekey`) and let this
  catch mistakes. ``refuse_server_sessions`` runs the same count inside a caller's transaction
  (``kms init`` and ``kms restore`` check again in the transaction that writes).

The lock file is opened as every side file is (kms.store.sidefile): a symbolic link, or anything
but a regular file of kms's own user, is refused with one line naming it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from kms.errors import DatabaseInUse
from kms.store.db import beside_sqlite_database
from kms.store.sidefile import open_side_file

SERVER_APPLICATION_NAME = "kms-server"


def serving_lock_path(url: str) -> Path | None:
    """The lock file beside a SQLite database; None for any other database."""
    return beside_sqlite_database(url, ".serving")


def hold_serving_lock(url: str) -> int | None:
    """Take the shared serving lock (SQLite) and return its descriptor, kept open on purpose.

    Raises ``UnsafeSideFile`` when the lock file is not kms's own regular file."""
    path = serving_lock_path(url)
    if path is None:
        return None
    fd = open_side_file(path, create=True)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


class AloneLock:
    """Held while a command that must run alone works; ``close`` lets servers start again."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> AloneLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def ensure_not_serving(url: str, engine: Engine, what: str) -> AloneLock:
    """Raise ``DatabaseInUse`` if a kms server uses the database; else hold it alone.

    Raises ``UnsafeSideFile`` when the lock file is not kms's own regular file."""
    path = serving_lock_path(url)
    if path is not None:
        fd = open_side_file(path, create=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseInUse(
                f"refusing to {what}: a kms server is using {make_url(url).database} (it holds "
                f"the lock on {path}); stop every kms server first; nothing was changed"
            ) from None
        return AloneLock(fd)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            refuse_server_sessions(conn, what)
    return AloneLock(None)


def refuse_server_sessions(conn: Connection, what: str) -> None:
    """PostgreSQL: raise ``DatabaseInUse`` if any other session on the database is a server's."""
    sessions = conn.execute(
        text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = :name AND pid <> pg_backend_pid()"
        ),
        {"name": SERVER_APPLICATION_NAME},
    ).scalar_one()
    if sessions:
        raise DatabaseInUse(
            f"refusing to {what}: {sessions} kms server connection(s) are open on the "
            "database (pg_stat_activity, application_name=kms-server); stop every kms node "
            "first; nothing was changed"
        )
