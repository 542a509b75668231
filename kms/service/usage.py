"""Use counting without a database write per request.

Encryptions: each process reserves a block of a version's encryptions with one locked UPDATE
(``KeyRepository.reserve_encryptions``) and hands them out from memory. The database counts every
reserved encryption as used, so however many processes and nodes race, and whenever one of them
dies, no version is ever used past its limit; a crash only wastes the rest of its block.

Decryptions and the last use are bookkeeping: counted in memory and added to the database at most
every ``FLUSH_SECONDS`` (and when the worker stops). A process killed with SIGKILL loses at most
that many seconds of decryption counts; nothing security-relevant depends on them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from kms.store.records import UseReport, utc_now

FLUSH_SECONDS = 10.0
#: A block is at most this fraction of a version's limit, so that with a small limit the
#: processes share a version instead of the first one taking all of it.
BLOCK_FRACTION = 8

#: key_id, incarnation, version, limit: a block reserved under another limit (before a PATCH
#: lowered it) is not used under the new one.
Slot = tuple[str, str, int, int]


def block_size(configured: int, limit: int) -> int:
    return max(1, min(configured, -(-limit // BLOCK_FRACTION)))


#: Keys whose unused reservations a process remembers; the least recently reserved is forgotten
#: first. Forgetting one only wastes the rest of its block (it stays counted as used), and keeps
#: a process that encrypts under a million keys from keeping a million entries.
MAX_BUDGET_KEYS = 65536


class EncryptionBudget:
    """The encryptions this process has reserved and not yet used: for each key, those of one
    slot (its latest version under its current limit), since a new block is reserved only for
    that slot and what is left of the key's other slots is never used again."""

    def __init__(self, max_keys: int = MAX_BUDGET_KEYS) -> None:
        self._lock = threading.Lock()
        self._max_keys = max_keys
        self._left: OrderedDict[str, tuple[Slot, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._left)

    def take(self, slot: Slot, count: int) -> bool:
        with self._lock:
            held = self._left.get(slot[0])
            if held is None or held[0] != slot or held[1] < count:
                return False
            self._left[slot[0]] = (slot, held[1] - count)
            return True

    def add(self, slot: Slot, count: int) -> None:
        with self._lock:
            held = self._left.pop(slot[0], None)
            left = held[1] if held is not None and held[0] == slot else 0
            self._left[slot[0]] = (slot, left + count)
            while len(self._left) > self._max_keys:
                self._left.popitem(last=False)


class UseTally:
    """Decryptions and last uses since the last flush."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], list] = {}
        self._flushed = time.monotonic()

    def count(self, key_id: str, version: int, decryptions: int) -> None:
        now = utc_now()
        with self._lock:
            entry = self._counts.setdefault((key_id, version), [0, now])
            entry[0] += decryptions
            entry[1] = now

    def due(self) -> bool:
        return time.monotonic() - self._flushed >= FLUSH_SECONDS

    def drain(self) -> list[UseReport]:
        with self._lock:
            counts, self._counts = self._counts, {}
            self._flushed = time.monotonic()
        return [
            UseReport(key_id, version, decryptions, last_used)
            for (key_id, version), (decryptions, last_used) in counts.items()
        ]

    def restore(self, reports: list[UseReport]) -> None:
        """Put back what a failed flush took, so the next flush carries it."""
        with self._lock:
            for report in reports:
                entry = self._counts.setdefault(
                    (report.key_id, report.version), [0, report.last_used_at]
                )
                entry[0] += report.decryptions
                entry[1] = max(entry[1], report.last_used_at)
