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

from kms.store.repository import UseReport, utc_now

FLUSH_SECONDS = 10.0
#: A block is at most this fraction of a version's limit, so that with a small limit the
#: processes share a version instead of the first one taking all of it.
BLOCK_FRACTION = 8

#: key_id, incarnation, version, limit: a block reserved under another limit (before a PATCH
#: lowered it) is not used under the new one.
Slot = tuple[str, str, int, int]


def block_size(configured: int, limit: int) -> int:
    return max(1, min(configured, -(-limit // BLOCK_FRACTION)))


class EncryptionBudget:
    """The encryptions this process has reserved and not yet used, per version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._left: dict[Slot, int] = {}

    def take(self, slot: Slot, count: int) -> bool:
        with self._lock:
            left = self._left.get(slot, 0)
            if left < count:
                return False
            self._left[slot] = left - count
            return True

    def add(self, slot: Slot, count: int) -> None:
        with self._lock:
            # A new block is reserved only for a key's latest version and limit: what is left of
            # the key's other slots is never used again (it stays counted as used).
            for stale in [s for s in self._left if s[0] == slot[0] and s != slot]:
                del self._left[stale]
            self._left[slot] = self._left.get(slot, 0) + count


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
