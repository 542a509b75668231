"""This node's journal of the newest generation it has seen of each key: a file that survives
restarts, shared by every process of the node (kms.service.keys.generations keeps it in memory).

Where: ``kms.state_file``, else ``<database>.generations`` beside a SQLite file; a PostgreSQL
node without ``kms.state_file`` remembers in memory only (warned at start).

Format, text lines:

- the first, ``kms-generations/1 <keystore id, hex>``: a journal of another keystore (a new
  ``kms init`` or ``kms restore --as-clone`` at the same place) is started afresh;
- then ``<generation> <key_id>`` per key, or ``<epoch> *`` for the keystore epoch; the highest
  value of each name wins, so lines are only ever appended, and a line cut short by a crash (no
  newline) is ignored.

Each process appends with one ``write`` on an ``O_APPEND`` descriptor under an exclusive
``flock``, so the processes' lines never interleave; before a read of the database a process
reads what the others appended since (one ``fstat``, and a read only when the file grew). Once
the journal holds more than twice as many lines as names (and at least ``COMPACT_AFTER``), the
process that appends rewrites it with one line per name: into a private temporary file beside
it, synced, renamed over it; the others notice the new inode and read it whole.

The file is opened as the other files beside the database are (kms.store.sidefile): with
``O_NOFOLLOW``, and it must be a regular file owned by this user (0600); a symlink, a FIFO or
another user's file in its place stops the server with one line naming it. Appends are not
synced one by one: a power cut may lose the last few, which only means the node then remembers
less (the audit trail still records them).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from kms.errors import ConfigurationError
from kms.store.db import beside_sqlite_database
from kms.store.sidefile import open_side_file

HEADER = b"kms-generations/1"
EPOCH_NAME = "*"
COMPACT_AFTER = 4096
log = logging.getLogger("kms.integrity")


def journal_path(state_file: Path | None, database_url: str) -> Path | None:
    """``kms.state_file``, else ``<database>.generations`` beside a SQLite file, else None."""
    if state_file is not None:
        return state_file
    return beside_sqlite_database(database_url, ".generations")


def reset_journal(path: Path | None) -> None:
    """Forget what the node has seen (``kms restore`` of a deliberate rollback: the restored
    keystore starts the node's journal afresh)."""
    if path is not None:
        path.unlink(missing_ok=True)


class GenerationJournal:
    """The journal file of one keystore; not thread-safe (its owner holds a lock)."""

    def __init__(self, path: Path, keystore_id: bytes) -> None:
        self.path = path
        self._header = HEADER + b" " + keystore_id.hex().encode("ascii") + b"\n"
        self._fd = -1
        self._inode = (0, 0)
        self._offset = 0
        self._lines = 0
        self._names = 0

    def __repr__(self) -> str:
        return f"GenerationJournal({str(self.path)!r})"

    def load(self) -> dict[str, int]:
        """Open (or create) the journal and read it whole: the highest value of each name."""
        self.close()
        self._fd = _open_private(self.path)
        seen: dict[str, int] = {}
        with self._locked():
            data = _read_all(self._fd)
            if not data.startswith(self._header):
                if data:
                    log.warning(
                        "%s belongs to another keystore (or is damaged): started afresh", self.path
                    )
                os.ftruncate(self._fd, 0)
                os.write(self._fd, self._header)
                data = self._header
            self._offset = len(data)
            self._lines = _merge(seen, data[len(self._header) :])
            status = os.fstat(self._fd)
            self._inode = (status.st_dev, status.st_ino)
        self._names = len(seen)
        return seen

    def news(self) -> dict[str, int]:
        """What other processes appended since the last look (empty when nothing did); the
        whole journal again when another process rewrote it."""
        if self._fd < 0:
            return self.load()
        try:
            status = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return {}
        if (status.st_dev, status.st_ino) != self._inode:
            return self.load()
        if status.st_size <= self._offset:
            return {}
        data = os.pread(self._fd, status.st_size - self._offset, self._offset)
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        seen: dict[str, int] = {}
        self._lines += _merge(seen, complete)
        return seen

    def append(self, entries: Iterable[tuple[str, int]], everything: dict[str, int]) -> None:
        """Append ``entries``; compact to ``everything`` (the caller's whole memory, which
        includes them) when the journal has grown past twice its names."""
        data = b"".join(f"{value} {name}\n".encode() for name, value in entries)
        if not data:
            return
        if self._fd < 0:
            self.load()
        with self._locked():
            os.write(self._fd, data)
            self._lines += data.count(b"\n")
            self._names = max(self._names, len(everything))
            if self._lines > max(COMPACT_AFTER, 2 * len(everything)):
                self._compact(everything)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _compact(self, everything: dict[str, int]) -> None:
        """Under the lock: the journal rewritten with one line per name."""
        descriptor, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            body = b"".join(f"{value} {name}\n".encode() for name, value in everything.items())
            with os.fdopen(descriptor, "wb") as out:
                out.write(self._header + body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        old = self._fd
        self._fd = _open_private(self.path)
        os.close(old)  # releases the lock on the old file: others find the new inode
        status = os.fstat(self._fd)
        self._inode = (status.st_dev, status.st_ino)
        self._offset = status.st_size
        self._lines = self._names = len(everything)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)


def _open_private(path: Path) -> int:
    """``path`` opened for appending, created 0600; refused (``UnsafeSideFile``) unless a
    regular file of this user, like the other files beside the database (kms.store.sidefile)."""
    try:
        descriptor = open_side_file(path, create=True)
    except OSError as error:
        raise ConfigurationError(
            f"cannot open the generations file {path}: {error.strerror} (kms.state_file)"
        ) from None
    flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
    fcntl.fcntl(descriptor, fcntl.F_SETFL, (flags | os.O_APPEND) & ~os.O_NONBLOCK)
    return descriptor


def _read_all(descriptor: int) -> bytes:
    size = os.fstat(descriptor).st_size
    return os.pread(descriptor, size, 0) if size else b""


def _merge(seen: dict[str, int], data: bytes) -> int:
    """Fold complete lines of ``data`` into ``seen`` (highest wins); returns the lines read."""
    lines = data.split(b"\n")[:-1]  # the part after the last newline is incomplete
    for line in lines:
        value, _, name = line.partition(b" ")
        if not value.isdigit() or not name:
            continue
        key = name.decode("utf-8", "replace")
        number = int(value)
        if number > seen.get(key, 0):
            seen[key] = number
    return len(lines)
