"""The tamper-evident audit log: JSON lines chained by SHA-256, one chain per node.

Line format: one JSON object per line (UTF-8, ``\\n``-terminated) whose ``prev_hash`` is the
SHA-256 (hex) of the previous line's bytes without its newline; the first line's is 64 zeros.
Deleting, reordering or editing a line breaks the link to the line after it.

Every process of a node (gunicorn's workers) appends to the same file: each append opens the file,
takes an exclusive ``flock``, finds the hash of the last line and writes one line, so the chain
stays one chain however many workers write. A process remembers the hash of the line it wrote
last and reads the file's tail only when another process has written since. A file whose mode
has no write bit is treated as sealed, even for root: the operator said it is read-only.

This module knows nothing of HTTP; ``kms.api.audit`` decides what a line holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS_HASH = "0" * 64
_TAIL_CHUNK = 8192


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
        """Write ``record`` plus ``prev_hash`` as one line; raise OSError if it cannot."""
        with self._lock, self._open() as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                status = os.fstat(fd)
                previous = self._previous_hash(fd, status)
                line = (
                    json.dumps({**record, "prev_hash": previous}, separators=(",", ":")) + "\n"
                ).encode("utf-8")
                _write_all(fd, line)
                self._tail = (
                    status.st_dev,
                    status.st_ino,
                    status.st_size + len(line),
                    line_hash(line),
                )
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _open(self) -> Iterator[int]:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not os.fstat(fd).st_mode & 0o222:
                raise PermissionError(errno.EACCES, "audit file is read-only", str(self.path))
            yield fd
        finally:
            os.close(fd)

    def _previous_hash(self, fd: int, status: os.stat_result) -> str:
        if self._tail is not None and self._tail[:3] == (
            status.st_dev,
            status.st_ino,
            status.st_size,
        ):
            return self._tail[3]
        return _last_line_hash(fd, status.st_size)


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
