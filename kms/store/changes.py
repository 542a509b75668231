"""Change counters: how a worker learns that a key row it cached was written by someone else.

A fixed table of ``BUCKETS`` 64-bit counters, indexed by ``crc32(key_id) % BUCKETS``. Every
writer bumps the key's bucket *after* its transaction committed; a reader reads the bucket
*before* it reads the row and keeps that value with its cached copy. On lookup, a copy whose
bucket moved is read again. Whatever order a write and a read interleave in, a read that could
have missed the write stored a counter value from before the bump, so the next lookup sees the
bucket moved (a bucket shared by several keys only costs a few extra reads).

Where the counters live:

- SQLite: ``<database>.changes``, a small file beside the database (0600, like the database)
  that every worker of the node and every ``kms`` command maps (``mmap``): reading a bucket is a
  memory read, no system call. A server creates the file if it is missing; a command only bumps
  an existing one (no file: no server to tell). Bumps are made under an exclusive ``flock`` so two
  writers never lose one; reads take no lock. The file is opened as every side file is
  (kms.store.sidefile): a symbolic link, or anything but a regular file of kms's own user, is
  never opened (``kms serve`` refuses to start; a worker or a command logs it and falls back to
  counters of its own).
- PostgreSQL: each process keeps the table in its own memory. Writers also say
  ``pg_notify('kms_keys', key_id)`` inside their transaction (delivered on commit, to every node),
  and each server worker runs a ``PostgresChangeListener`` thread that bumps its local buckets on
  every notification. When the listener's connection is lost it bumps every bucket (everything
  cached is read again) and reconnects with backoff; the time bound of the cache covers the gap.

A missing or unusable file, or a lost listener, never makes a cached row live longer than
``kms.cache_staleness_ms``: the counters only make a change visible sooner.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import struct
import threading
import zlib
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from kms.errors import UnsafeSideFile
from kms.store.db import beside_sqlite_database
from kms.store.sidefile import open_side_file

if TYPE_CHECKING:  # an optional dependency (the postgres extra)
    import psycopg

BUCKETS = 4096
_COUNTER = struct.Struct("<Q")
TABLE_BYTES = BUCKETS * _COUNTER.size
#: The NOTIFY channel, and the payload that means "every key" (rekey, upgrade).
CHANNEL = "kms_keys"
ALL_KEYS = "*"
_MASK = 2**64 - 1
#: A listener that heard nothing for this long checks its connection with a query.
KEEPALIVE_SECONDS = 5.0

log = logging.getLogger("kms.cache")


def bucket_of(key_id: str) -> int:
    return zlib.crc32(key_id.encode("utf-8")) % BUCKETS


class KeyChanges(Protocol):
    """What the row cache reads and what writers bump."""

    def mark(self, key_id: str) -> int: ...
    def bump(self, key_id: str) -> None: ...
    def bump_all(self) -> None: ...
    def close(self) -> None: ...


class LocalChanges:
    """The counters in this process's memory: PostgreSQL (fed by the listener), an in-memory
    SQLite database, and the fallback when the shared file cannot be used."""

    def __init__(self) -> None:
        self._counters = array("Q", bytes(TABLE_BYTES))
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "LocalChanges()"

    def mark(self, key_id: str) -> int:
        return self._counters[bucket_of(key_id)]

    def bump(self, key_id: str) -> None:
        index = bucket_of(key_id)
        with self._lock:
            self._counters[index] = (self._counters[index] + 1) & _MASK

    def bump_all(self) -> None:
        with self._lock:
            for index in range(BUCKETS):
                self._counters[index] = (self._counters[index] + 1) & _MASK

    def close(self) -> None:
        pass


def changes_path(url: str) -> Path | None:
    """``<database>.changes`` beside a SQLite file; None for any other database."""
    return beside_sqlite_database(url, ".changes")


class SharedFileChanges:
    """The counters in ``<database>.changes``, shared by every process that maps it.

    Opened lazily, and again after a fork (a mapping survives a fork, but an ``flock`` belongs to
    the open file description, which parent and child would share). ``create``: a server, which
    makes the file if it is missing; a command only uses an existing file. When the file cannot
    be used, this says so in the log once and falls back to counters of this process alone.
    """

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        self._create = create
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._fallback: LocalChanges | None = None

    def __repr__(self) -> str:
        return f"SharedFileChanges({str(self.path)!r})"

    def mark(self, key_id: str) -> int:
        table = self._map if self._pid == os.getpid() else self._open()
        if table is None:
            return self._local().mark(key_id)
        count: int = _COUNTER.unpack_from(table, bucket_of(key_id) * _COUNTER.size)[0]
        return count

    def bump(self, key_id: str) -> None:
        self._bump([bucket_of(key_id)])

    def bump_all(self) -> None:
        self._bump(range(BUCKETS))

    def _bump(self, indices: range | list[int]) -> None:
        table = self._map if self._pid == os.getpid() else self._open()
        if table is None:
            local = self._local()
            for index in indices:
                local._counters[index] = (local._counters[index] + 1) & _MASK
            return
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                for index in indices:
                    offset = index * _COUNTER.size
                    value = _COUNTER.unpack_from(table, offset)[0]
                    _COUNTER.pack_into(table, offset, (value + 1) & _MASK)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _local(self) -> LocalChanges:
        if self._fallback is None:
            self._fallback = LocalChanges()
        return self._fallback

    def _open(self) -> mmap.mmap | None:
        with self._lock:
            if self._pid == os.getpid():
                return self._map
            self._pid = os.getpid()
            self._map, self._fd = None, -1
            try:
                fd = open_side_file(self.path, create=self._create)
            except FileNotFoundError:
                return None  # a command, and no server has made the file: nobody to tell
            except UnsafeSideFile as error:
                log.warning(
                    "kms: %s: other processes' key changes are seen within "
                    "kms.cache_staleness_ms only",
                    error.public_message,
                )
                return None
            except OSError as error:
                log.warning(
                    "kms: cannot open %s (%s): other processes' key changes are seen within "
                    "kms.cache_staleness_ms only",
                    self.path,
                    error.strerror,
                )
                return None
            try:
                if os.fstat(fd).st_size < TABLE_BYTES:
                    # Only ever grown: truncating would reset counters other processes compare.
                    os.ftruncate(fd, TABLE_BYTES)
                self._map = mmap.mmap(fd, TABLE_BYTES)
            except (OSError, ValueError) as error:
                os.close(fd)
                log.warning(
                    "kms: cannot map %s (%s): other processes' key changes are seen within "
                    "kms.cache_staleness_ms only",
                    self.path,
                    getattr(error, "strerror", None) or error,
                )
                return None
            self._fd = fd
            return self._map

    def close(self) -> None:
        with self._lock:
            if self._map is not None and self._pid == os.getpid():
                self._map.close()
                os.close(self._fd)
            self._map, self._fd, self._pid = None, -1, None


def prepare_changes_file(url: str) -> None:
    """Make ``<database>.changes`` if it is missing, or raise ``UnsafeSideFile`` if what is there
    is not kms's own regular file: ``kms serve`` checks it once, before any worker starts."""
    path = changes_path(url)
    if path is not None:
        os.close(open_side_file(path, create=True))


def open_changes(url: str, *, create: bool = False) -> KeyChanges:
    """The change counters for the database at ``url`` (see the module's docstring)."""
    path = changes_path(url)
    if path is None:
        return LocalChanges()
    return SharedFileChanges(path, create=create)


class PostgresChangeListener:
    """A daemon thread that ``LISTEN``s on ``kms_keys`` and bumps ``changes`` per notification.

    Its own connection (not the pool's), named ``application_name=kms-server`` like the server's
    others. On any failure of that connection: every bucket bumped (nothing cached can be trusted
    to have been told), then a reconnect after a backoff that doubles up to ``max_backoff``.
    ``stop`` ends the thread within about ``poll_seconds``.
    """

    def __init__(
        self,
        url: str,
        changes: LocalChanges,
        *,
        application_name: str,
        poll_seconds: float = 0.5,
        max_backoff: float = 5.0,
    ) -> None:
        self._engine: Engine = create_engine(
            url,
            poolclass=NullPool,
            hide_parameters=True,
            connect_args={"application_name": application_name, "connect_timeout": 5},
        )
        self._changes = changes
        self._poll_seconds = poll_seconds
        self._max_backoff = max_backoff
        self._stopping = threading.Event()
        #: Set once LISTEN is in force (tests wait for it); cleared while disconnected.
        self.listening = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return "PostgresChangeListener()"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kms-key-changes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._poll_seconds * 4 + 5)
        self._engine.dispose()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                self._listen()
                backoff = 0.1
            except Exception as error:  # any failure: reconnect, never die
                if self._stopping.is_set():
                    break
                log.warning(
                    "kms: key-change listener lost its connection (%s); reconnecting in %.1fs, "
                    "cached keys are read again meanwhile",
                    type(error).__name__,
                    backoff,
                )
            finally:
                if self.listening.is_set():
                    self.listening.clear()
                # Notifications may have been missed: nothing cached before now is trusted.
                self._changes.bump_all()
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _listen(self) -> None:
        raw = self._engine.raw_connection()
        try:
            # psycopg's own connection: kms listens only on PostgreSQL, through psycopg.
            connection = cast("psycopg.Connection[Any]", raw.driver_connection)
            connection.autocommit = True
            connection.execute(f"LISTEN {CHANNEL}")
            # Whatever was cached before LISTEN took effect may have missed a notification.
            self._changes.bump_all()
            self.listening.set()
            quiet = 0.0
            while not self._stopping.is_set():
                heard = False
                for notification in connection.notifies(timeout=self._poll_seconds):
                    heard = True
                    if notification.payload == ALL_KEYS:
                        self._changes.bump_all()
                    else:
                        self._changes.bump(notification.payload)
                    if self._stopping.is_set():
                        break
                quiet = 0.0 if heard else quiet + self._poll_seconds
                if quiet >= KEEPALIVE_SECONDS:
                    # Make sure a quiet connection is still there: a dead one that the kernel
                    # has not noticed would otherwise wait for notifications for ever.
                    connection.execute("SELECT 1")
                    quiet = 0.0
        finally:
            # Discarded, not returned: a pool's reset (a ROLLBACK) on a lost connection would
            # only log a second failure.
            with contextlib.suppress(Exception):
                raw.invalidate()
