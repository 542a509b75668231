"""Bounded, thread-safe LRU caches: loaded key material, and key rows for the hot path.

``KeyMaterialCache`` holds loaded key material (AEAD objects, private keys).

Entries are keyed by (kind, key_id, incarnation, version). A version's material never changes once
written, and recreating a key gives it a new incarnation, so an entry can never be stale: a
worker that did not see a delete or recreate simply never looks its old entries up again.
Recreate and delete still drop the key's entries here to free memory promptly (a rotation keeps
them: the older versions stay valid for decrypt and verify).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from kms.store.records import KeyRecord

#: No byte bound unless one is given.
UNBOUNDED = 2**63


class _BoundedEntries:
    """Least-recently-used entries bounded by count and by estimated bytes; thread-safe.

    The bookkeeping both caches share: each entry's size is given when it is stored, and the
    oldest entries go first until both bounds hold."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """The estimated bytes of what is cached now."""
        return self._bytes

    def _store(self, key: Hashable, value: Any, size: int) -> None:
        if self._max_entries <= 0 or size > self._max_bytes:
            return
        with self._lock:
            self._bytes += size - self._sizes.get(key, 0)
            self._sizes[key] = size
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                oldest, _ = self._entries.popitem(last=False)
                self._bytes -= self._sizes.pop(oldest)

    def _remove(self, key: Hashable) -> None:
        """Drop one entry; the caller holds ``_lock``."""
        if self._entries.pop(key, None) is not None:
            self._bytes -= self._sizes.pop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._bytes = 0


class KeyMaterialCache(_BoundedEntries):
    """Bounded by ``max_entries`` and by ``max_bytes``, counted with the size each ``put`` gives
    (an estimate of the entry's memory: kms.service.keys.material.material_bytes)."""

    def __init__(self, max_entries: int, max_bytes: int = UNBOUNDED) -> None:
        super().__init__(max_entries, max_bytes)
        #: Lookups answered from memory and lookups that had to load (read by the metrics).
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"KeyMaterialCache(entries={len(self._entries)}, max={self._max_entries})"

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return value

    def holds(self, key: Hashable) -> bool:
        """Whether ``key`` is cached, without counting a lookup or refreshing its age."""
        return key in self._entries

    def put(self, key: Hashable, value: Any, size: int = 0) -> None:
        self._store(key, value, size)

    def drop_key(self, key_id: str) -> None:
        with self._lock:
            for entry in [e for e in self._entries if isinstance(e, tuple) and e[1] == key_id]:
                self._remove(entry)


def secret_cache_key(key_id: str, incarnation: str, version: int) -> tuple[str, str, str, int]:
    """Where a version's loaded secret is cached: a recreated key (new incarnation) never hits
    its old versions' entries."""
    return ("secret", key_id, incarnation, version)


def public_cache_key(key_id: str, incarnation: str, version: int) -> tuple[str, str, str, int]:
    return ("public", key_id, incarnation, version)


@dataclass(frozen=True, slots=True)
class _CachedRow:
    key: KeyRecord
    mark: int
    read_at: float


#: What a cached key row costs in memory, about (measured with tracemalloc: a KeyRecord of a
#: fresh key, its dict entry and this cache's bookkeeping come to about 1.1 KB), plus its
#: variable-length text.
ROW_BASE_BYTES = 1200


def row_bytes(key: KeyRecord) -> int:
    return (
        ROW_BASE_BYTES
        + len(key.description)
        + len(key.labels)
        + len(key.last_use_attempt or "")
        + len(key.key_id)
    )


class KeyRowCache(_BoundedEntries):
    """Key rows for the cryptographic operations, so that a warm key reads nothing from the
    database; never used by the lifecycle calls (GET, list, PATCH, rotate...).

    A row is used only while both hold:
    - it was read less than ``staleness_ms`` ago (the hard bound, whatever else fails), and
    - the key's change counter (``marks``: kms.store.changes) still has the value it had just
      before the row was read: any write committed since, by any process, moved it.

    ``staleness_ms`` 0 switches the cache off (every use reads the row, as before issue 12).
    Bounded by ``max_entries`` and by ``max_bytes`` (estimated, ``row_bytes``); least recently
    used first out.
    """

    def __init__(
        self,
        staleness_ms: int,
        marks: Callable[[str], int],
        *,
        max_entries: int = 4096,
        max_bytes: int = UNBOUNDED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_entries if staleness_ms > 0 else 0, max_bytes)
        self._staleness = staleness_ms / 1000
        self._marks = marks
        self._clock = clock

    def __repr__(self) -> str:
        return (
            f"KeyRowCache(entries={len(self._entries)}, max={self._max_entries}, "
            f"staleness={self._staleness}s)"
        )

    def mark(self, key_id: str) -> int:
        """Read before the row: ``put`` stores it with the row."""
        return self._marks(key_id) if self._max_entries > 0 else 0

    def get(self, key_id: str) -> KeyRecord | None:
        """The cached row if it is still within the bound and nobody wrote the key since."""
        if self._max_entries <= 0:
            return None
        entry: _CachedRow | None = self._entries.get(key_id)
        if entry is None:
            return None
        if self._clock() - entry.read_at >= self._staleness or self._marks(key_id) != entry.mark:
            self.drop(key_id)
            return None
        return entry.key

    def put(self, key: KeyRecord, mark: int, read_at: float) -> None:
        """Cache ``key``, read at ``read_at`` (``now()`` before the read) after ``mark``."""
        if self._max_entries > 0:
            self._store(key.key_id, _CachedRow(key, mark, read_at), row_bytes(key))

    def now(self) -> float:
        return self._clock()

    def drop(self, key_id: str) -> None:
        with self._lock:
            self._remove(key_id)
