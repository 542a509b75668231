"""Leaving no readable copy of destroyed rows in the database files.

A DELETE or an UPDATE does not erase the old bytes by itself:

- **SQLite** keeps a deleted cell's bytes in the page's free space, and in free pages, unless
  ``secure_delete`` is on. kms sets it on every connection (kms.store.db), whatever the library
  was built with (upstream's default is off), so the page a DELETE or UPDATE writes holds zeros
  where the old cell was. Under WAL that page goes to the ``-wal`` file first, and the ``-wal``
  file keeps the frames of earlier transactions (the row as it was inserted) until they are
  overwritten. So after a change that destroys material, ``reclaim_freed_space`` runs a
  ``TRUNCATE`` checkpoint: the zeroed pages are copied into the database file and the ``-wal``
  file is cut to zero bytes. It waits ``RECLAIM_WAIT_MS`` at most for readers still on an older
  snapshot (a ``kms backup`` holds one for its whole run; new writers wait meanwhile); should
  one outlast that, the log keeps its frames until the next reclaim, and a warning says so.
- **PostgreSQL** never overwrites a row in place (MVCC): the old tuple stays in the table file
  until its space is reused, and a plain ``VACUUM`` marks the space free without erasing it (a
  destroyed wrapped key was still in the relation file after ``VACUUM``). ``VACUUM FULL``
  rewrites the table into a new file and unlinks the old one, so the table files hold live rows
  only (``kms_metadata`` too, after a rekey). It holds an ``ACCESS EXCLUSIVE`` lock for the
  rewrite (about 0.4 s per 100,000 version rows on a 2-core host), during which every node's
  reads of that table wait. A ``lock_timeout`` of ``RECLAIM_WAIT_MS`` keeps it from queueing
  every request behind a long reader (a ``kms backup`` under way): when it cannot have the lock
  in time it gives up with a warning, and the next reclaim (the next destroy, trim, recreate,
  ``kms destroy-due`` or ``kms rekey``) covers it. A role that does not own the table cannot
  ``VACUUM FULL`` it (PostgreSQL only warns): the table's file node is compared before and
  after, and a warning names the table. ``VACUUM FULL`` copies a deleted row that a transaction
  still open in the same database may see (one that began before the destroy committed): such a
  row stays in the new file until a later reclaim, with no warning, since kms's role cannot see
  other roles' snapshots (autovacuum's included).

What neither reaches: the file system's freed blocks, PostgreSQL's own WAL and archive, backups
and replicas. docs/security.md says so.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, Table, text
from sqlalchemy.exc import DBAPIError

from kms.store.db import SQLITE_BUSY_TIMEOUT_SECONDS

log = logging.getLogger("kms.store")

#: How long a reclaim waits for readers before giving up: SQLite's checkpoint for readers of an
#: older snapshot (new writers wait meanwhile), PostgreSQL's ``VACUUM FULL`` for its lock (every
#: request of every node that reads the table waits behind it meanwhile).
RECLAIM_WAIT_MS = 2000


def reclaim_freed_space(engine: Engine, tables: tuple[Table, ...]) -> bool:
    """Make the space of rows deleted or rewritten in ``tables`` unreadable in the database
    files (the module docstring); once their transaction has committed. Returns whether it did;
    a failure is logged, never raised: the change it follows has committed."""
    try:
        if engine.dialect.name == "sqlite":
            return _checkpoint(engine)
        if engine.dialect.name == "postgresql":
            return all(_vacuum_full(engine, table) for table in tables)
    except DBAPIError as error:
        log.warning(
            "kms: could not clear the space of destroyed rows from the database files (%s); "
            "the next destroy, trim, recreate, kms destroy-due or kms rekey tries again",
            type(error.orig).__name__,
        )
        return False
    return True


def _checkpoint(engine: Engine) -> bool:
    with engine.connect() as conn:
        conn.exec_driver_sql(f"PRAGMA busy_timeout={RECLAIM_WAIT_MS}")
        try:
            busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    if busy:
        log.warning(
            "kms: a reader kept the SQLite write-ahead log from being truncated; it keeps a copy "
            "of destroyed rows until the next checkpoint that truncates it"
        )
        return False
    return True


def _vacuum_full(engine: Engine, table: Table) -> bool:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        node = text("SELECT pg_relation_filenode(CAST(:name AS regclass))")
        before = conn.execute(node, {"name": table.name}).scalar_one()
        conn.execute(text(f"SET lock_timeout = {RECLAIM_WAIT_MS}"))
        try:
            conn.execute(text(f'VACUUM FULL "{table.name}"'))
        finally:
            conn.execute(text("RESET lock_timeout"))  # the connection goes back to the pool
        after = conn.execute(node, {"name": table.name}).scalar_one()
    if before == after:
        log.warning(
            "kms: VACUUM FULL %s did not rewrite the table (the database role must own it); its "
            "file keeps a copy of destroyed rows",
            table.name,
        )
        return False
    return True
