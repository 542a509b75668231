"""The database an operator command works on: its name and file, its faults said in one line, and
making a new one (``kms init``, ``kms restore``) alone, into nothing, all or nothing.

Making a database (``NewDatabase``):

1. No server may use it (checked first, so that a refusal says so), and it must hold nothing
   (kms.store.inventory): a missing or zero-byte SQLite file with no
   ``-wal``, ``-shm`` or ``-journal`` file beside it (SQLite would apply another database's
   journal to the new file), or a PostgreSQL database with no object outside PostgreSQL's own
   schemas. A database holding a keystore is ``AlreadyInitialised`` (for init), anything else
   ``DatabaseNotEmpty``; neither is touched.
2. Once the command is ready to write (the backup checked, the keystore derived), it must be
   alone: the serving lock is taken exactly as ``kms rekey`` takes it (kms.store.serving) and
   held until the new database is in place, so no server uses it (one running beside a removed
   SQLite file still has the old file open) and none starts meanwhile. Then step 1 is checked
   again.
3. SQLite: the schema and every row are written into a private temporary file beside the target
   (``.<name>.init-*``, 0600) in one transaction, and the file is renamed into place only when
   complete, after a last check under the lock; killed or failing at any point, the target is as
   it was. PostgreSQL: the server-session check, the emptiness check, the schema and every row
   are one transaction; a failure rolls all of it back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from kms.errors import DatabaseNotEmpty, DatabaseUnusable, NotInitialised, StoreUnavailable
from kms.service.keystore import ensure_not_initialised
from kms.settings import Settings
from kms.store.db import WRITE, create_kms_engine, use_write_ahead_log
from kms.store.faults import database_name, describe_database_error, existing_tables
from kms.store.inventory import foreign_objects
from kms.store.models import kms_metadata
from kms.store.repository import SQLKeyRepository
from kms.store.schema import upgrade_to_head
from kms.store.serving import ensure_not_serving, refuse_server_sessions, serving_lock_path

#: Writes the rows of a new database, in the transaction that made its schema.
Fill = Callable[[Connection], None]


class NewDatabase:
    """The configured database, checked to hold nothing (step 1 of the module docstring);
    ``create(fill)`` does the rest. ``action`` is what the messages say: ``"initialise"``,
    ``"restore into"``."""

    def __init__(self, settings: Settings, action: str) -> None:
        self._settings = settings
        self._action = action
        self.name, self._path = database_of(settings)
        with database_faults(action, self.name, self._path):
            self._refuse_if_serving()
            refuse_unless_empty(settings, self.name, self._path, action)

    def _refuse_if_serving(self) -> None:
        """Say first that a server runs, if one does (without making a lock file: a server
        that runs has made it)."""
        lock = serving_lock_path(self._settings.database_url)
        if lock is not None and not os.path.lexists(lock):
            return
        engine = create_kms_engine(self._settings.database_url, pool=False)
        try:
            ensure_not_serving(self._settings.database_url, engine, self._action.split()[0]).close()
        finally:
            engine.dispose()

    def create(self, fill: Fill) -> None:
        """Hold the database alone, check again that it holds nothing, make the schema and
        write ``fill``'s rows; all or nothing."""
        settings, action, name, path = self._settings, self._action, self.name, self._path
        verb = action.split()[0]
        with database_faults(action, name, path):
            if path is not None:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            engine = create_kms_engine(settings.database_url, pool=False)
            try:
                lock = ensure_not_serving(settings.database_url, engine, verb)
            finally:
                engine.dispose()
        with lock, database_faults(action, name, path):
            refuse_unless_empty(settings, name, path, action)  # written to meanwhile?
            if path is not None:
                _create_sqlite_database(settings, path, fill, action)
                return

            def alone_and_empty(conn: Connection) -> None:
                refuse_server_sessions(conn, verb)
                _refuse_objects(conn, name, action)

            _create_schema_with(settings.database_url, fill, first=alone_and_empty)


def refuse_unless_empty(settings: Settings, name: str, path: Path | None, action: str) -> None:
    if path is not None:
        _refuse_journals(path, name, action)
        if is_empty_file(path):
            return  # connecting would create the file, or write a header into an empty one
    engine = create_kms_engine(settings.database_url, pool=False)
    try:
        if action == "initialise" and kms_metadata.name in existing_tables(engine):
            ensure_not_initialised(SQLKeyRepository(engine))  # AlreadyInitialised
        with engine.connect() as conn:
            _refuse_objects(conn, name, action)
    finally:
        engine.dispose()


def _refuse_objects(conn: Connection, name: str, action: str) -> None:
    found = foreign_objects(conn, limit=6)
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise DatabaseNotEmpty(
            f"refusing to {action} {name}: it already holds {shown}; kms "
            f"{action.split()[0]} needs a missing or empty database (no table, sequence, type, "
            "view, function or other object in any schema); nothing was changed"
        )


def _refuse_journals(path: Path, name: str, action: str) -> None:
    left = companions(path)
    if left and is_empty_file(path):
        raise DatabaseNotEmpty(
            f"refusing to {action} {name}: {left[0]} is there without its database (left by "
            "a database removed while in use, or by a crash) and SQLite would apply it to the "
            f"new one; remove {', '.join(str(p) for p in left)} once no process uses them; "
            "nothing was changed"
        )


def _create_schema_with(url: str, fill: Fill, first: Fill | None = None) -> None:
    """``first`` (a check), the schema and whatever ``fill`` writes, in one transaction."""
    engine = create_kms_engine(url, pool=False)
    try:
        use_write_ahead_log(engine)  # outside the transaction: SQLite refuses it inside one
        with engine.execution_options(**WRITE).begin() as conn:
            if first is not None:
                first(conn)
            upgrade_to_head(conn)
            fill(conn)
    finally:
        engine.dispose()


def _create_sqlite_database(settings: Settings, path: Path, fill: Fill, action: str) -> None:
    """Build the database in a private temporary file beside ``path``, then move it into place.

    The file is 0600 from the start; SQLite gives the -wal and -shm files the database file's
    mode, so they stay private too.
    """
    descriptor, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.init-", dir=path.parent)
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        url = make_url(settings.database_url).set(database=str(temporary))
        _create_schema_with(url.render_as_string(hide_password=False), fill)
        if any(companions(temporary)):  # the last close checkpoints and removes the WAL
            raise DatabaseUnusable(f"cannot {action} {path}: SQLite left {temporary}-wal behind")
        _move_into_place(temporary, path, settings, action)
    finally:
        for leftover in (temporary, *companions(temporary)):
            leftover.unlink(missing_ok=True)


def _move_into_place(temporary: Path, path: Path, settings: Settings, action: str) -> None:
    name = str(path)
    # Checked again: someone may have written to it since. Never replace a database with
    # tables; an empty one (zero bytes, or a SQLite header and nothing else) is replaced.
    refuse_unless_empty(settings, name, path, action)
    if path.exists():
        os.replace(temporary, path)
    else:
        try:
            os.link(temporary, path)  # fails if the file appeared meanwhile: never replace it
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.replace(temporary, path)  # a file system without hard links
    sync_directory(path.parent)  # the new name survives a crash


def sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def companions(path: Path) -> list[Path]:
    return [
        companion
        for suffix in ("-wal", "-shm", "-journal")
        if (companion := path.with_name(path.name + suffix)).exists()
    ]


@contextlib.contextmanager
def database_faults(action: str, name: str, path: Path | None) -> Iterator[None]:
    """Turn a failure of the database or its file system into one line naming both."""
    try:
        yield
    except StoreUnavailable as error:
        raise DatabaseUnusable(
            f"cannot {action} database {name}: {_cause(error.__cause__, path)}"
        ) from None
    except (DBAPIError, OSError) as error:
        raise DatabaseUnusable(f"cannot {action} database {name}: {_cause(error, path)}") from None
    except ArgumentError:
        raise DatabaseUnusable(
            f"cannot {action} database {name}: database.dsn is not a database URL kms can use"
        ) from None


_FILE_SYSTEM_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)
#: Driver errors that a read-only, missing or full directory shows up as.
_FILE_SYSTEM_ERRORS = ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_FULL")


def _cause(error: BaseException | None, path: Path | None) -> str:
    """The driver's cause, or for a SQLite file what its directory says when that is clearer
    (SQLite reports a read-only or full directory as "unable to open" or "disk I/O error")."""
    if isinstance(error, OSError):
        # EROFS, EACCES or ENOSPC name a temporary file; the directory's state says more.
        errorname = "SQLITE_CANTOPEN" if error.errno in _FILE_SYSTEM_ERRNOS else ""
        where = f" ({error.filename})" if error.filename else ""
        cause = f"{error.strerror or type(error).__name__}{where}"
    else:
        errorname = str(getattr(getattr(error, "orig", None), "sqlite_errorname", ""))
        cause = describe_database_error(error)
    if path is not None and errorname.startswith(_FILE_SYSTEM_ERRORS):
        return directory_problem(path.parent) or cause
    return cause


def directory_problem(directory: Path) -> str | None:
    if not directory.is_dir():
        return f"directory {directory} does not exist"
    status = os.statvfs(directory)
    if status.f_flag & os.ST_RDONLY or not os.access(directory, os.W_OK):
        return (
            f"directory {directory} is read-only (SQLite keeps its -wal and -shm files beside "
            "the database)"
        )
    if status.f_bfree == 0 or (status.f_bavail == 0 and os.geteuid() != 0):
        return f"the disk holding {directory} is full"
    return None


def listing(items: list[str], shown: int = 5) -> str:
    more = f", ... {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def database_of(settings: Settings) -> tuple[str, Path | None]:
    """The database's name for messages, and its file for any SQLite URL (``sqlite:///``,
    ``sqlite+pysqlite:///``...)."""
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        raise DatabaseUnusable(
            f"database.dsn is not a file path or a database URL ({settings.source})"
        ) from None
    name = database_name(settings.database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return name, None
    return name, Path(url.database)


def is_empty_file(path: Path) -> bool:
    """True for a SQLite database that is missing or zero bytes long: it holds no keystore."""
    return not path.is_file() or path.stat().st_size == 0


def not_initialised(name: str) -> NotInitialised:
    return NotInitialised(f"the database {name} is not initialised: run `kms init` first")
