"""Decryption counts and last uses a process keeps between flushes (kms.service.keys.limits).

docs/api.md (key versions): `decryptions` is added by each worker every 10 s and when it stops;
``KMSService.flush_use`` puts back what a failed flush took (``restore``), so a database that
refused one flush loses no count and no last use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kms.service.keys.limits import UseTally
from kms.store.records import UseReport

EARLY = datetime(2026, 1, 1, tzinfo=UTC)


def by_version(reports: list[UseReport]) -> dict[tuple[str, int], tuple[int, datetime]]:
    return {(r.key_id, r.version): (r.decryptions, r.last_used_at) for r in reports}


def test_a_drain_hands_out_the_counts_once() -> None:
    tally = UseTally()
    tally.count("k", 1, 2)
    tally.count("k", 1, 3)
    tally.count("k", 2, 1)
    drained = by_version(tally.drain())
    assert {version: count for version, (count, _) in drained.items()} == {
        ("k", 1): 5,
        ("k", 2): 1,
    }
    assert tally.drain() == []


def test_a_failed_flush_put_back_is_carried_by_the_next_one() -> None:
    tally = UseTally()
    tally.count("k", 1, 4)
    failed = tally.drain()
    tally.count("k", 1, 1)  # counted while the failed flush was under way
    tally.restore(failed)
    tally.restore([UseReport("other", 3, 2, EARLY)])  # a version with nothing counted since
    after = by_version(tally.drain())
    assert after[("k", 1)][0] == 5
    assert after[("other", 3)] == (2, EARLY)


def test_the_last_use_put_back_is_the_later_of_the_two() -> None:
    tally = UseTally()
    tally.count("k", 1, 1)
    (counted,) = tally.drain()
    later = counted.last_used_at + timedelta(hours=1)
    tally.count("k", 1, 1)
    tally.restore([UseReport("k", 1, 1, later)])
    tally.restore([UseReport("k", 1, 1, EARLY)])
    ((count, last_used),) = by_version(tally.drain()).values()
    assert (count, last_used) == (3, later)


def test_encryptions_made_are_counted_apart_from_decryptions() -> None:
    """What /metrics shows as a version's encryptions: the ones made, not the reserved blocks."""
    tally = UseTally()
    tally.count("k", 1, 0, 1)
    tally.count("k", 1, 2, 3)
    failed = tally.drain()
    assert [(r.decryptions, r.encryptions) for r in failed] == [(2, 4)]
    tally.count("k", 1, 0, 1)
    tally.restore(failed)
    assert [(r.decryptions, r.encryptions) for r in tally.drain()] == [(2, 5)]
