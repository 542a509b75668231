"""Per-identity token buckets shared by every process of a node.

The buckets live in one small file (a fixed table of slots) that gunicorn's master creates at
start; every worker maps it (``mmap``) and changes a bucket only while it holds an exclusive
``flock`` on the file, so all workers together take from the same bucket and the limit holds for
the node, however many workers it runs. Each process opens the file itself after the fork (a
``flock`` belongs to an open file description, which a fork would share), and a thread lock
orders the threads of one process. The clock is ``CLOCK_MONOTONIC``, which all processes share.

A slot is (16-byte BLAKE2b digest of the identity, tokens, last update). An identity takes the
first free or matching slot of a short probe sequence; when all of those are taken, the one
updated longest ago is reused (an idle bucket refills to ``burst`` anyway).
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import threading
import time
from pathlib import Path

SLOTS = 4096
PROBES = 16
_SLOT = struct.Struct("<16sdd")
TABLE_BYTES = SLOTS * _SLOT.size
_EMPTY = bytes(16)


def create_table(path: Path) -> None:
    """Create (or empty) the bucket table file; done once, before any worker starts."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, TABLE_BYTES)
    finally:
        os.close(fd)


class SharedTokenBuckets:
    def __init__(self, path: Path, rate: float, burst: int) -> None:
        self.path = path
        self.rate = rate
        self.burst = burst
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._fd = -1
        self._map: mmap.mmap | None = None

    def __repr__(self) -> str:
        return f"SharedTokenBuckets(rate={self.rate}, burst={self.burst})"

    def take(self, identity: str) -> int:
        """Take one token for ``identity``: 0 if it was there, else whole seconds to wait."""
        digest = hashlib.blake2b(identity.encode("utf-8"), digest_size=16).digest()
        with self._lock:
            table = self._table()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = time.monotonic()
                offset, tokens, updated = self._slot(table, digest, now)
                tokens = min(float(self.burst), tokens + max(0.0, now - updated) * self.rate)
                wait = 0
                if tokens >= 1.0:
                    tokens -= 1.0
                else:
                    wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                _SLOT.pack_into(table, offset, digest, tokens, now)
                return wait
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _table(self) -> mmap.mmap:
        if self._pid != os.getpid() or self._map is None:
            # A new process (a forked worker): its own open file description and mapping.
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            self._map = mmap.mmap(fd, TABLE_BYTES)
            self._fd = fd
            self._pid = os.getpid()
        return self._map

    def _slot(self, table: mmap.mmap, digest: bytes, now: float) -> tuple[int, float, float]:
        """The slot for ``digest``: (offset, tokens, last update); a new slot starts full."""
        start = int.from_bytes(digest[:8], "little") % SLOTS
        oldest = (math.inf, 0)
        for probe in range(PROBES):
            offset = ((start + probe) % SLOTS) * _SLOT.size
            owner, tokens, updated = _SLOT.unpack_from(table, offset)
            if owner == digest:
                return offset, tokens, updated
            if owner == _EMPTY:
                return offset, float(self.burst), now
            if updated < oldest[0]:
                oldest = (updated, offset)
        return oldest[1], float(self.burst), now
