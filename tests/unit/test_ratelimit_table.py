"""The shared token-bucket table (kms.ratelimit), in process on a real table file: each identity
keeps its own bucket, however the identities fall in the table, and a bucket changes only under
the exclusive ``flock`` (docs/security.md, Rate limits: "changes only under an exclusive
`flock`", "each identity has a token bucket").
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import mmap
import os
import stat
from pathlib import Path

import pytest

from kms.ratelimit import PROBES, SLOTS, SharedTokenBuckets, create_table

RATE = 0.01  # a token every 100 s: the test's own pauses refill a negligible share of one


def start_slot(identity: str) -> int:
    """The first slot ``identity`` probes (as kms.ratelimit computes it)."""
    digest = hashlib.blake2b(identity.encode("utf-8"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little") % SLOTS


def identities_starting_together(count: int) -> list[str]:
    """``count`` identities whose probes all start at the same slot, away from the table's ends
    (so that slot 0 is not in their window)."""
    names = (f"CN=client-{n}" for n in itertools.count())
    first = next(name for name in names if PROBES <= start_slot(name) < SLOTS - 2 * PROBES)
    found = [first]
    while len(found) < count:
        name = next(names)
        if start_slot(name) == start_slot(first):
            found.append(name)
    return found


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "buckets"
    create_table(path)
    return path


def test_the_table_is_readable_and_writable_by_its_owner_only(table: Path) -> None:
    assert stat.S_IMODE(table.stat().st_mode) == 0o600


def test_identities_that_start_at_the_same_slot_keep_their_own_buckets(table: Path) -> None:
    first, second = identities_starting_together(2)
    buckets = SharedTokenBuckets(table, rate=RATE, burst=1)
    assert buckets.take(first) == 0
    assert buckets.take(second) == 0
    assert buckets.take(first) > 0
    assert buckets.take(second) > 0


def test_a_newcomer_to_a_full_probe_window_keeps_the_slot_it_takes(table: Path) -> None:
    """All the slots a newcomer may probe are taken: it takes the one updated longest ago, and
    keeps it (its own bucket runs out), while the others keep theirs."""
    *settled, newcomer = identities_starting_together(PROBES + 1)
    buckets = SharedTokenBuckets(table, rate=RATE, burst=1)
    for identity in settled:
        assert buckets.take(identity) == 0
    assert buckets.take(newcomer) == 0
    assert buckets.take(newcomer) > 0
    assert buckets.take(settled[-1]) > 0  # the most recently updated bucket was not the one reused


class ProbingBuckets(SharedTokenBuckets):
    """Buckets that, while a bucket is being changed, try to lock the table from another open
    file description (as another worker process would)."""

    other_could_lock: bool | None = None

    def _slot(self, table: mmap.mmap, digest: bytes, now: float) -> tuple[int, float, float]:
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.other_could_lock = False
        else:
            self.other_could_lock = True
        finally:
            os.close(fd)
        return super()._slot(table, digest, now)


def test_a_bucket_changes_only_while_the_table_is_locked(table: Path) -> None:
    buckets = ProbingBuckets(table, rate=RATE, burst=1)
    buckets.take("CN=client")
    assert buckets.other_could_lock is False


def test_taking_opens_the_table_once_per_process(table: Path) -> None:
    buckets = SharedTokenBuckets(table, rate=RATE, burst=1)
    buckets.take("CN=client")
    open_files = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        buckets.take("CN=client")
    assert len(os.listdir("/proc/self/fd")) == open_files
