"""The tamper-evident audit log: JSON lines chained by SHA-256, one chain per node.

Line format: one JSON object per line (UTF-8, ``\\n``-terminated) whose ``prev_hash`` is the
SHA-256 (hex) of the previous line's bytes without its newline; the first line's is 64 zeros.
Deleting, reordering or editing a line breaks the link to the line after it.

Every process of a node (gunicorn's workers) appends to the same file: each append opens the file,
takes an exclusive ``flock``, finds the hash of the last line and writes one line, so the chain
stays one chain however many workers write. A process remembers the hash of the line it wrote
last and reads the file's tail only when another process has written since. A file whose mode
has no write bit is treated as sealed, even for root: the operator said it is read-only. The
path must name a regular file (or a link to one), checked on every open: a FIFO or a device
(``/dev/null``) would swallow every line while requests succeed.

A line is written whole or not at all. A write that fails part-way (a full disk) is cut back to
the end of the last complete line before the error is raised. A last line without its newline
(a process killed mid-write, or a cut-back that itself failed) is found by the next writer that
reads the tail, under the lock, and by ``repair`` at start: the incomplete bytes are removed and
a ``{"type":"repair","removed_bytes":N,"removed_sha256":...}`` line, chained to the last complete
line, records that they were. So the chain never carries a line glued onto a fragment.

This module knows nothing of HTTP; ``kms.api.audit`` decides what a line holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS_HASH = "0" * 64
_TAIL_CHUNK = 8192
log = logging.getLogger("kms")

_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


class NotARegularFile(OSError):
    """The audit path names something other than a regular file: lines written there are lost."""


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def utc_timestamp() -> str:
    """UTC with milliseconds: ``2026-11-28T23:59:46.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends chained lines to one file; safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # (device, inode, size after our last write, hash of our last line)
        self._tail: tuple[int, int, int, str] | None = None

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def check_writable(self) -> None:
        """Raise OSError unless a line could be appended now (the file is created if missing)."""
        with self._open() as fd:
            del fd

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` plus ``prev_hash`` as one line, whole or not at all; raise OSError
        if it cannot."""
        with self._lock, self._open() as fd, _exclusive(fd):
            status = os.fstat(fd)
            if not self._wrote_last(status) and self._repair(fd, status):
                status = os.fstat(fd)
            self._write_line(fd, status, record)

    def repair(self) -> int:
        """Remove an incomplete last line and record that in the chain; the bytes removed (0:
        the file ends with a complete line). Raise OSError if the file cannot be repaired."""
        with self._lock, self._open() as fd, _exclusive(fd):
            return self._repair(fd, os.fstat(fd))

    def _write_line(self, fd: int, status: os.stat_result, record: Mapping[str, Any]) -> None:
        line = (
            json.dumps(
                {**record, "prev_hash": self._previous_hash(fd, status)}, separators=(",", ":")
            )
            + "\n"
        ).encode("utf-8")
        try:
            _write_all(fd, line)
        except OSError:
            # Back to the last complete line: no fragment for the next line to be glued onto.
            # Should this fail too, the next writer (or the next start) repairs the tail.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, status.st_size)
            raise
        self._tail = (status.st_dev, status.st_ino, status.st_size + len(line), line_hash(line))

    def _repair(self, fd: int, status: os.stat_result) -> int:
        size = status.st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return 0
        complete = _end_of_last_line(fd, size)
        removed = hashlib.sha256()
        for start in range(complete, size, _TAIL_CHUNK):
            removed.update(os.pread(fd, min(_TAIL_CHUNK, size - start), start))
        os.ftruncate(fd, complete)
        log.warning(
            "kms: audit log %s: removed an incomplete last line (%d bytes) left by an "
            "interrupted write; a repair line records it",
            self.path,
            size - complete,
        )
        self._write_line(
            fd,
            os.fstat(fd),
            {
                "time": utc_timestamp(),
                "type": "repair",
                "removed_bytes": size - complete,
                "removed_sha256": removed.hexdigest(),
            },
        )
        return size - complete

    def _wrote_last(self, status: os.stat_result) -> bool:
        """True when the file is as this process's last line left it."""
        return self._tail is not None and self._tail[:3] == (
            status.st_dev,
            status.st_ino,
            status.st_size,
        )

    @contextlib.contextmanager
    def _open(self) -> Iterator[int]:
        # O_NONBLOCK: opening a FIFO must not wait for a reader; it is refused just below.
        fd = os.open(
            self.path,
            os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK,
            0o600,
        )
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                kind = next(
                    (name for is_kind, name in _FILE_KINDS if is_kind(status.st_mode)), "special"
                )
                raise NotARegularFile(errno.EINVAL, f"not a regular file ({kind})", str(self.path))
            if not status.st_mode & 0o222:
                raise PermissionError(errno.EACCES, "audit file is read-only", str(self.path))
            yield fd
        finally:
            os.close(fd)

    def _previous_hash(self, fd: int, status: os.stat_result) -> str:
        if self._tail is not None and self._wrote_last(status):
            return self._tail[3]
        return _last_line_hash(fd, status.st_size)


@contextlib.contextmanager
def _exclusive(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _end_of_last_line(fd: int, size: int) -> int:
    """The offset just after the last newline before ``size`` (0 if there is none)."""
    position = size
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        newline = os.pread(fd, position - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _last_line_hash(fd: int, size: int) -> str:
    """The hash of the file's last line (read backwards from the end), or the genesis hash."""
    if size == 0:
        return GENESIS_HASH
    end = size
    if os.pread(fd, 1, size - 1) == b"\n":
        end = size - 1
    tail = b""
    position = end
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        tail = os.pread(fd, position - start, start) + tail
        position = start
        newline = tail.rfind(b"\n")
        if newline >= 0:
            return line_hash(tail[newline + 1 :])
    return line_hash(tail)


@dataclass(frozen=True)
class Verification:
    good_lines: int
    #: 1-based number of the first line whose link is broken, or None for an intact chain.
    broken_line: int | None = None
    reason: str = ""


def verify_chain(path: Path) -> Verification:
    """Check every link of the chain in ``path``. Raises OSError if the file cannot be read."""
    expected = GENESIS_HASH
    count = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                return Verification(count, number, "the line is incomplete")
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, ValueError):
                return Verification(count, number, "the line is not JSON")
            if not isinstance(record, dict) or record.get("prev_hash") != expected:
                return Verification(
                    count,
                    number,
                    "its prev_hash does not match the line before it"
                    if number > 1
                    else "the first line's prev_hash is not the genesis hash",
                )
            expected = line_hash(line)
            count += 1
    return Verification(count)
