"""Leaving no readable copy of destroyed rows in the database files.

A DELETE or an UPDATE does not erase the old bytes by itself:

- **SQLite** keeps a deleted cell's bytes in the page's free space, and in free pages, unless
  ``secure_delete`` is on. kms sets it on every connection (kms.store.db), whatever the library
  was built with (upstream's default is off), so the page a DELETE or UPDATE writes holds zeros
  where the old cell was. Under WAL that page goes to the ``-wal`` file first, and the ``-wal``
  file keeps the frames of earlier transactions (the row as it was inserted) until they are
  overwritten. So after a change that destroys material, ``reclaim_freed_space`` runs a
  ``TRUNCATE`` checkpoint: the zeroed pages are copied into the database file and the ``-wal``
  file is cut to zero bytes. It waits (SQLite's busy timeout) for readers still on an older
  snapshot; should one outlast it, the log keeps its frames until the next such checkpoint, and
  a warning says so.
- **PostgreSQL** never overwrites a row in place (MVCC): the old tuple stays in the table file
  until its space is reused, and a plain ``VACUUM`` marks the space free without erasing it (the
  destroyed wrapped key was found in the relation file after ``VACUUM``). ``VACUUM FULL``
  rewrites the table into a new file and unlinks the old one, so the table files hold live rows
  only. It takes an ``ACCESS EXCLUSIVE`` lock for the rewrite (about 0.4 s per 100,000 version
  rows measured on a 2-core host), during which every node's reads of that table wait; a
  ``lock_timeout`` keeps it from queueing every request behind a long reader (a ``kms backup``
  in progress): when it cannot have the lock in time it gives up with a warning, and the next
  reclaim (the next destroy, trim, recreate, ``kms destroy-due`` or ``kms rekey``) covers it.
  A role that does not own the table cannot ``VACUUM FULL`` it (PostgreSQL only warns): the
  table's file node is compared before and after, and a warning names the table.

What neither reaches: the file system's freed blocks, PostgreSQL's own WAL and archive, backups
and replicas. docs/security.md says so.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, Table, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger("kms.store")

#: How long ``VACUUM FULL`` may wait for its lock before giving up (every request of every node
#: that reads the table waits behind it meanwhile).
VACUUM_LOCK_TIMEOUT_MS = 2000


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
        busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    if busy:
        log.warning(
            "kms: a reader kept the SQLite write-ahead log from being truncated; it keeps a copy "
            "of destroyed rows until the next checkpoint that truncates it"
        )
        return False
    return True


def _vacuum_full(engine: Engine, table: Table) -> bool:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"SET lock_timeout = {VACUUM_LOCK_TIMEOUT_MS}"))
        node = text("SELECT pg_relation_filenode(CAST(:name AS regclass))")
        before = conn.execute(node, {"name": table.name}).scalar_one()
        conn.execute(text(f'VACUUM FULL "{table.name}"'))
        after = conn.execute(node, {"name": table.name}).scalar_one()
    if before == after:
        log.warning(
            "kms: VACUUM FULL %s did not rewrite the table (the database role must own it); its "
            "file keeps a copy of destroyed rows",
            table.name,
        )
        return False
    return True
