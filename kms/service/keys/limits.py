"""Use counting without a database write per request.

Encryptions: each process reserves a block of a version's encryptions with one locked UPDATE
(``KeyRepository.reserve_encryptions``) and hands them out from memory. The database counts every
reserved encryption as used, so however many processes and nodes race, and whenever one of them
dies, no version is ever used past its limit; a crash only wastes the rest of its block.

Decryptions, the encryptions made (as opposed to reserved: what /metrics shows as a version's
encryptions) and the last use are bookkeeping: counted in memory and added to the database at most
every ``FLUSH_SECONDS``, when a worker answers /metrics, and when the worker stops. A process
killed with SIGKILL loses at most that many seconds of these counts; nothing security-relevant
depends on them.

Every encryption (one, a data key, each item of a batch) passes through ``UseLimits.encrypting``:
it is the one place the limit is enforced. Limits are for AEAD keys only: they exist because
random 96-bit nonces may repeat after about 2**32 encryptions, and RSA-OAEP has no nonce.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kms.crypto.algorithms import RSA_ENCRYPTION_ALGORITHMS
from kms.errors import InvalidRequest, KeyChanged
from kms.service.keys.rules import NotLatest
from kms.service.keys.validation import MAX_ENCRYPTIONS_PER_VERSION
from kms.store.records import KeyRecord, KeyRepository, UseReport, utc_now

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
    """Decryptions, encryptions made and last uses since the last flush."""

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        #: (key_id, version) -> [decryptions, last use, encryptions]
        self._counts: dict[tuple[str, int], list[Any]] = {}
        self._flushed = time.monotonic()

    def count(self, key_id: str, version: int, decryptions: int, encryptions: int = 0) -> None:
        now = self._clock()
        with self._lock:
            entry = self._counts.setdefault((key_id, version), [0, now, 0])
            entry[0] += decryptions
            entry[1] = now
            entry[2] += encryptions

    def due(self) -> bool:
        return time.monotonic() - self._flushed >= FLUSH_SECONDS

    def drain(self) -> list[UseReport]:
        with self._lock:
            counts, self._counts = self._counts, {}
            self._flushed = time.monotonic()
        return [
            UseReport(key_id, version, decryptions, last_used, encryptions)
            for (key_id, version), (decryptions, last_used, encryptions) in counts.items()
        ]

    def restore(self, reports: list[UseReport]) -> None:
        """Put back what a failed flush took, so the next flush carries it."""
        with self._lock:
            for report in reports:
                entry = self._counts.setdefault(
                    (report.key_id, report.version), [0, report.last_used_at, 0]
                )
                entry[0] += report.decryptions
                entry[1] = max(entry[1], report.last_used_at)
                entry[2] += report.encryptions


#: How many times an encryption retries after its version ran out (each time another process
#: rotated first and used the new version up before this one got a block of it).
ENCRYPTION_ATTEMPTS = 16


def encryption_limit(key: KeyRecord, default: int) -> int:
    """The encryptions a version of ``key`` may make: its own limit, else the configured one."""
    return min(key.max_encryptions_per_version or default, MAX_ENCRYPTIONS_PER_VERSION)


class UseLimits:
    """Encryptions counted against each version's limit, and decryptions tallied.

    ``rotate_from(key)`` adds a version only if the latest is still ``key``'s (raising
    ``NotLatest`` or ``KeyChanged`` when another process rotated or recreated first); ``read``
    reads the key row again. Both come from the lifecycle, which owns rotation.
    """

    def __init__(
        self,
        repository: KeyRepository,
        *,
        default_limit: int,
        encryption_block: int,
        rotate_from: Callable[[KeyRecord], KeyRecord],
        read: Callable[[str], KeyRecord],
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._repository = repository
        self.default_limit = default_limit
        self._encryption_block = encryption_block
        self._rotate_from = rotate_from
        self._read = read
        self._budget = EncryptionBudget()
        self._tally = UseTally(clock)

    def encrypting(self, key: KeyRecord, count: int) -> KeyRecord:
        """The key row ``count`` encryptions are to be made under, counted against its limit.

        A batch counts every item, a failing one too: a version is never used past its limit,
        at worst a little before it.
        """
        if key.algorithm not in RSA_ENCRYPTION_ALGORITHMS:
            key = self._take_encryptions(key, count)
        self.count_use(key.key_id, key.latest_version, 0, encryptions=count)
        return key

    def _take_encryptions(self, key: KeyRecord, count: int) -> KeyRecord:
        """From this process's reserved block when it has one left, else by reserving a new
        block in the database; when the version has too few left, it is rotated (exactly once
        however many processes race) and the encryptions are made under the new version. No
        version is used past its limit, even across crashes."""
        limit = encryption_limit(key, self.default_limit)
        if count > limit:
            raise InvalidRequest(
                f"{count} encryptions in one request exceed the key's limit of {limit} per version"
            )
        for _ in range(ENCRYPTION_ATTEMPTS):
            slot = (key.key_id, key.incarnation, key.latest_version, limit)
            if self._budget.take(slot, count):
                return key
            block = max(count, block_size(self._encryption_block, limit))
            granted = self._repository.reserve_encryptions(
                key.key_id, key.latest_version, block, count, limit
            )
            if granted:
                self._budget.add(slot, granted - count)
                return key
            try:
                key = self._rotate_from(key)
            except (NotLatest, KeyChanged):
                key = self._read(key.key_id)
            limit = encryption_limit(key, self.default_limit)
        raise KeyChanged()  # retried that often: tell the client to retry

    def count_use(
        self, key_id: str, version: int, decryptions: int, *, encryptions: int = 0
    ) -> None:
        self._tally.count(key_id, version, decryptions, encryptions)
        if self._tally.due():
            self.flush_use()

    def flush_use(self) -> None:
        """Add this process's counts of decryptions and encryptions made and its last uses to
        the database (at most every few seconds, when it answers /metrics, and when the worker
        stops). A failure keeps them for the next flush."""
        reports = self._tally.drain()
        try:
            self._repository.record_use(reports)
        except Exception:
            self._tally.restore(reports)
            raise

    def use_totals(
        self, after: tuple[str, int] | None = None, limit: int | None = None
    ) -> list[tuple[str, int, int, int, int]]:
        """``(key_id, version, encryptions made, decryptions, encryptions reserved)`` of the used
        versions in key order, for metrics: all of them, or a page of up to ``limit`` after
        ``(key_id, version)``."""
        return self._repository.use_totals(after, limit)
