"""A bounded, thread-safe LRU cache of loaded key material (AEAD objects, private keys).

Entries are keyed by (kind, key_id, incarnation, version). A version's material never changes once
written, and recreating a key gives it a new incarnation, so an entry can never be stale: a
worker that did not see a delete or recreate simply never looks its old entries up again.
Recreate and delete still drop the key's entries here to free memory promptly (a rotation keeps
them: the older versions stay valid for decrypt and verify).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class KeyMaterialCache:
    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
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

    def put(self, key: Hashable, value: Any) -> None:
        if self._max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def drop_key(self, key_id: str) -> None:
        with self._lock:
            for entry in [entry for entry in self._entries if entry[1] == key_id]:
                del self._entries[entry]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
