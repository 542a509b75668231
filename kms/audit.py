"""The tamper-evident audit log: JSON lines, each sealed with an HMAC, chained by SHA-256.

Line format: one JSON object per line (UTF-8, ``\\n``-terminated). Its ``prev_hash`` is the
SHA-256 (hex) of the previous line's bytes without its newline (the first line of the first file:
64 zeros); then ``kid``, the id of the audit key (the first 8 bytes, hex, of
``HMAC(audit key, "kms/audit/key-id")``); last ``mac``, the HMAC-SHA256 (hex) under the audit key
of the line's bytes up to ``,"mac":`` with the closing ``}`` put back: everything before it,
``prev_hash`` included. The audit key is derived from the master key by HKDF (``kms/audit/v1``,
bound to the keystore id: ``Keyring.audit_key``); this module gets that key, never the master key.
Only kms can write a line whose MAC verifies, and a line's MAC covers the hash of the line before
it: deleting, reordering or editing a line and recomputing every later hash still leaves the next
line's MAC wrong. Lines written before keyed chains (no ``kid``, no ``mac``) are the unkeyed
format of earlier releases: ``kms.audit_verify`` checks their links and says they are unkeyed.

Rotation: every file written by this release starts with a ``file`` line,
``{"time":...,"type":"file","file":N,"previous_file":N-1,"prev_hash":H,...}``, where ``H`` is the
hash of the previous file's last line (64 zeros and ``previous_file: null`` for the first file, or
when kms cannot tell which file came before): the files form one chain, so a file removed from the
middle, or cut short, is detected. To know the previous file's end once the file has been moved
away, kms keeps the chain's head beside the log, in ``<file>.chain``: one sealed line holding the
device, inode and size of the file last written, its number and its last line's hash, padded to
``HEAD_BYTES`` and rewritten in place by one write. Every append
takes an exclusive ``flock`` on that file, opens the log by its path and writes one line, then
updates the head: the chain stays one chain however many processes write and however the file is
moved between two lines.

A writer that finds the log not as the head describes says so in the chain: a ``resume`` line
(``{"type":"resume","reason":...,"expected_hash":...}``) when the file does not end with the line
kms wrote last (lines removed or rewritten), or is not the file kms wrote last, or when the head is
missing or not sealed by this key while the log already holds keyed lines. Lines found after the
head's size that are this key's and chain on (a process killed between writing its line and
updating the head) are simply taken up.

Every process of a node (gunicorn's workers) appends to the same file. A file whose mode has no
write bit is treated as sealed, even for root: the operator said it is read-only. The path must
name a regular file (or a link to one), checked on every open: a FIFO or a device (``/dev/null``)
would swallow every line while requests succeed.

A line is written whole or not at all. A write that fails part-way (a full disk) is cut back to
the end of the last complete line before the error is raised. A last line without its newline
(a process killed mid-write, or a cut-back that itself failed) is found by the next writer, under
the lock, and by ``repair`` at start: the incomplete bytes are removed and a
``{"type":"repair","removed_bytes":N,"removed_sha256":...}`` line, chained to the last complete
line, records that they were. So the chain never carries a line glued onto a fragment.

This module knows nothing of HTTP; ``kms.api.audit`` decides what a line holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

GENESIS_HASH = "0" * 64
_TAIL_CHUNK = 8192
#: The chain head's size on disk: its sealed line, padded with spaces.
HEAD_BYTES = 512
#: Bytes past the head's size taken up as lines of a writer killed before it moved the head on.
MAX_UNRECORDED_BYTES = 1 << 20
#: What ends a keyed line: its MAC, the last member of the object.
SEAL = re.compile(rb',"mac":"([0-9a-f]{64})"\}\Z')
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


class HasAuditKey(Protocol):
    def audit_key(self) -> bytearray: ...


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def utc_timestamp() -> str:
    """UTC with milliseconds: ``2026-11-28T23:59:46.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def head_path(path: Path) -> Path:
    """Where the chain's head of the log ``path`` is kept."""
    return path.with_name(path.name + ".chain")


class AuditKey:
    """HMAC-SHA256 under the audit key. The key sits in one HMAC context, copied per line: no
    Python-side copy of it is kept (the caller overwrites the buffer it was given)."""

    def __init__(self, key: bytes | bytearray) -> None:
        self._template = hmac.new(key, digestmod="sha256")
        self.key_id = self._digest(b"kms/audit/key-id")[:8].hex()

    @classmethod
    def of(cls, keyring: HasAuditKey) -> AuditKey:
        key = keyring.audit_key()
        try:
            return cls(key)
        finally:
            key[:] = bytes(len(key))

    def __repr__(self) -> str:
        return f"AuditKey(key_id={self.key_id!r})"

    def _digest(self, data: bytes) -> bytes:
        mac = self._template.copy()
        mac.update(data)
        return mac.digest()

    def seal(self, record: Mapping[str, Any]) -> bytes:
        """``record`` as one keyed line, with its newline. ``record`` holds no ``kid`` or
        ``mac`` of its own."""
        body = json.dumps({**record, "kid": self.key_id}, separators=(",", ":")).encode("utf-8")
        return self.seal_encoded(body)

    def seal_encoded(self, body: bytes) -> bytes:
        """``body``, a compact JSON object that ends with this key's ``kid``, as one keyed
        line with its newline: what ``seal`` makes of the record ``body`` encodes."""
        mac = self._digest(body).hex().encode("ascii")
        return body[:-1] + b',"mac":"' + mac + b'"}\n'

    def verify(self, line: bytes) -> bool:
        """True when ``line`` (with or without its newline) is sealed by this key. Compared in
        constant time."""
        line = line.rstrip(b"\n")
        found = SEAL.search(line)
        if found is None:
            return False
        body = line[: found.start()] + b"}"
        return hmac.compare_digest(self._digest(body).hex().encode("ascii"), found.group(1))


@dataclass(frozen=True)
class ChainHead:
    """The file kms wrote last, as ``<file>.chain`` records it."""

    device: int
    inode: int
    size: int
    file: int
    last_hash: str

    def describes(self, status: os.stat_result) -> bool:
        return (self.device, self.inode) == (status.st_dev, status.st_ino)


class AuditLog:
    """Appends keyed, chained lines to one file; safe across threads and processes."""

    def __init__(self, path: Path, key: AuditKey) -> None:
        self.path = path
        self.head = head_path(path)
        self._key = key
        self._lock = threading.Lock()
        #: The head this process wrote last, as written and as read back.
        self._written: tuple[bytes, ChainHead] | None = None

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    @classmethod
    def check_writable(cls, path: Path) -> None:
        """Raise OSError unless a line could be appended to ``path`` now (the file and its
        chain head are created if missing); needs no key."""
        audit_log = cls.__new__(cls)
        audit_log.path, audit_log.head = path, head_path(path)
        with audit_log._locked():
            pass

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` (plus ``prev_hash``, ``kid`` and ``mac``) as one line, whole or not
        at all, after the ``file`` line of a new file or a ``repair`` or ``resume`` line when
        needed; raise OSError if it cannot."""
        with self._lock:
            # ``_locked`` without its context managers, whose machinery cost a tenth of an
            # append (docs/performance.md).
            fd, head_fd = self._acquire()
            try:
                self._write_line(fd, head_fd, self._prepare(fd, head_fd), record)
            finally:
                os.close(fd)
                os.close(head_fd)  # releases the lock

    def repair(self) -> int:
        """Remove an incomplete last line and record that in the chain; the bytes removed (0:
        the file ends with a complete line). Raise OSError if the file cannot be repaired."""
        with self._lock, self._locked() as (fd, head_fd):
            size = os.fstat(fd).st_size
            if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
                return 0
            removed = size - _end_of_last_line(fd, size)
            self._prepare(fd, head_fd)
            return removed

    # -- under the lock ------------------------------------------------------------------------

    def _prepare(self, fd: int, head_fd: int) -> tuple[int, str]:
        """Make the file ready for the next line; its number and the hash to chain to."""
        status = os.fstat(fd)
        head = self._read_head(head_fd)
        if head is not None and head.describes(status) and head.size == status.st_size:
            return head.file, head.last_hash  # as this node left it: the usual case
        removed = self._remove_incomplete_line(fd)
        status = os.fstat(fd)
        if status.st_size == 0:
            # A new file (or one emptied by copytruncate): its first line names the one before.
            number, previous = (1, None) if head is None else (head.file + 1, head.file)
            prev_hash = GENESIS_HASH if head is None else head.last_hash
            file_line = {"time": utc_timestamp(), "type": "file", "file": number}
            file_line |= {"previous_file": previous}
            position = number, self._write_line(fd, head_fd, (number, prev_hash), file_line)
            reason = None
        else:
            last = _last_line(fd, status.st_size)
            number, reason = self._judge_tail(fd, status, head, last)
            position = number, line_hash(last)
        if removed is not None:
            position = number, self._write_line(fd, head_fd, position, removed)
        if reason is not None:
            log.warning("kms: audit log %s: %s; a resume line records it", self.path, reason)
            resume: dict[str, Any] = {"time": utc_timestamp(), "type": "resume"}
            resume |= {"reason": reason, "expected_hash": head and head.last_hash}
            position = number, self._write_line(fd, head_fd, position, resume)
        return position

    def _judge_tail(
        self, fd: int, status: os.stat_result, head: ChainHead | None, last: bytes
    ) -> tuple[int, str | None]:
        """The number of a file kms did not leave as it is now, and why the chain must say so
        (None: it need not)."""
        if head is None:
            number = _file_number(fd)
            if b'"mac":' in last:  # keyed lines, and no head sealed by this key
                return number, f"its chain head {self.head} is missing or not this key's"
            return number, None  # a file of unkeyed lines, from before keyed chains
        if not head.describes(status):
            return _file_number(fd), "it is not the file kms wrote last"
        if head.size <= status.st_size and self._chains_on(fd, head, status.st_size):
            return head.file, None
        return head.file, "it does not end with the line kms wrote last"

    def _chains_on(self, fd: int, head: ChainHead, size: int) -> bool:
        """True when the file, from the head's size on, holds lines of this key that chain on
        from the head's last line (a writer killed before it updated the head)."""
        if head.size == 0 or os.pread(fd, 1, head.size - 1) != b"\n":
            return False
        if size - head.size > MAX_UNRECORDED_BYTES:
            return False  # far more than one killed writer leaves: not read into memory
        expected = head.last_hash
        for line in _read_from(fd, head.size, size).splitlines():
            record = _parse(line)
            if record is None or record.get("prev_hash") != expected or not self._key.verify(line):
                return False
            expected = line_hash(line)
        return True

    def _remove_incomplete_line(self, fd: int) -> dict[str, Any] | None:
        """Cut an incomplete last line off; the ``repair`` record that says so, or None."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        complete = _end_of_last_line(fd, size)
        removed = hashlib.sha256(_read_from(fd, complete, size)).hexdigest()
        os.ftruncate(fd, complete)
        log.warning(
            "kms: audit log %s: removed an incomplete last line (%d bytes) left by an "
            "interrupted write; a repair line records it",
            self.path,
            size - complete,
        )
        return {
            "time": utc_timestamp(),
            "type": "repair",
            "removed_bytes": size - complete,
            "removed_sha256": removed,
        }

    def _write_line(
        self, fd: int, head_fd: int, position: tuple[int, str], record: Mapping[str, Any]
    ) -> str:
        """Append ``record`` chained to ``position`` (file number, previous hash), then move
        the head on; the new line's hash."""
        number, prev_hash = position
        line = self._key.seal({**record, "prev_hash": prev_hash})
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, line)
        except OSError:
            # Back to the last complete line: no fragment for the next line to be glued onto.
            # Should this fail too, the next writer (or the next start) repairs the tail.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
        status = os.fstat(fd)
        written = line_hash(line)
        # Killed before this write, the next writer takes the line up (``_chains_on``).
        raw = self._key.seal_encoded(
            _head_body(status.st_dev, status.st_ino, status.st_size, number, written, self._key)
        ).ljust(HEAD_BYTES, b" ")
        # One write of a fixed size over the old head: never a mix of two heads, nor an empty one.
        os.pwrite(head_fd, raw, 0)
        self._written = (
            raw,
            ChainHead(status.st_dev, status.st_ino, status.st_size, number, written),
        )
        return written

    def _read_head(self, head_fd: int) -> ChainHead | None:
        raw = os.pread(head_fd, HEAD_BYTES, 0)
        if self._written is not None and raw == self._written[0]:
            return self._written[1]  # this process wrote it last: already checked
        raw = raw.rstrip(b" ")
        if not raw or not self._key.verify(raw):
            return None
        try:
            record = json.loads(raw)
            return ChainHead(
                device=int(record["device"]),
                inode=int(record["inode"]),
                size=int(record["size"]),
                file=int(record["file"]),
                last_hash=str(record["last_hash"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[int, int]]:
        """The log, opened by its path once the head's lock is held: a file moved away before
        that is not written to, one moved away after gets this one line, and the head says so."""
        fd, head_fd = self._acquire()
        try:
            yield fd, head_fd
        finally:
            os.close(fd)
            os.close(head_fd)  # releases the lock

    def _acquire(self) -> tuple[int, int]:
        """``_locked``'s log and head, open, the head locked; the caller closes both, the head
        last (closing it releases the lock)."""
        # A FIFO or a device is named as such, before a head is made beside it (in /dev).
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            status = None
        if status is not None:
            _require_regular(self.path, status)
        head_fd = self._lock_head()
        try:
            return self._open(), head_fd
        except BaseException:
            os.close(head_fd)
            raise

    def _lock_head(self) -> int:
        """The chain head, open and locked."""
        head_fd = os.open(
            self.head,
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
            0o600,
        )
        try:
            if not stat.S_ISREG(os.fstat(head_fd).st_mode):
                raise NotARegularFile(errno.EINVAL, "not a regular file", str(self.head))
            fcntl.flock(head_fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(head_fd)
            raise
        return head_fd

    def _open(self) -> int:
        """The log, opened by its path for appending; refused unless a writable regular file."""
        # O_NONBLOCK: opening a FIFO must not wait for a reader; it is refused just below.
        fd = os.open(
            self.path,
            os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK,
            0o600,
        )
        try:
            status = os.fstat(fd)
            _require_regular(self.path, status)
            if not status.st_mode & 0o222:
                raise PermissionError(errno.EACCES, "audit file is read-only", str(self.path))
        except BaseException:
            os.close(fd)
            raise
        return fd


def _head_body(
    device: int, inode: int, size: int, number: int, last_hash: str, key: AuditKey
) -> bytes:
    """The chain head's record, encoded as ``json.dumps`` encodes it for ``AuditKey.seal``
    (integers and hex strings only, so formatted directly: a tenth of an append's cost was
    the head's ``json.dumps``; a unit test keeps the two equal)."""
    return (
        f'{{"device":{device},"inode":{inode},"size":{size},"file":{number},'
        f'"last_hash":"{last_hash}","kid":"{key.key_id}"}}'
    ).encode("ascii")


def _require_regular(path: Path, status: os.stat_result) -> None:
    if stat.S_ISDIR(status.st_mode):  # as opening it for writing says
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for is_kind, name in _FILE_KINDS if is_kind(status.st_mode)), "special")
        raise NotARegularFile(errno.EINVAL, f"not a regular file ({kind})", str(path))


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _file_number(fd: int) -> int:
    """The number the file's ``file`` line gives it; 0 for a file without one (written before
    keyed chains)."""
    first = os.pread(fd, _TAIL_CHUNK, 0).split(b"\n", 1)[0]
    record = _parse(first) or {}
    number = record.get("file") if record.get("type") == "file" else None
    return number if isinstance(number, int) and not isinstance(number, bool) else 0


def _read_from(fd: int, start: int, end: int) -> bytes:
    parts = []
    for position in range(start, end, _TAIL_CHUNK):
        parts.append(os.pread(fd, min(_TAIL_CHUNK, end - position), position))
    return b"".join(parts)


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


def _last_line(fd: int, size: int) -> bytes:
    """The file's last line without its newline (read backwards from the end); b"" if empty."""
    if size == 0:
        return b""
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
            return tail[newline + 1 :]
    return tail
