"""Rotation by use (max_encryptions_per_version) and by time (rotation_period, rotate-due), on
real SQLite files; several services on one database stand for several workers and nodes."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest

from kms.errors import InvalidRequest
from kms.service.keys import KMSService
from kms.service.keys.validation import parse_rotation_period
from kms.store.records import utc_now


def test_the_encryption_that_would_pass_the_limit_rotates_first(service: KMSService) -> None:
    service.create_key("orders", max_encryptions_per_version=3)
    versions = [service.encrypt("orders", b"x").version for _ in range(7)]
    assert versions == [1, 1, 1, 2, 2, 2, 3]
    detail = service.get_key("orders")
    assert detail.version == 3
    assert [v.encryptions for v in detail.key_versions] == [3, 3, 1]


def test_racing_services_never_pass_the_limit_and_rotate_exactly_once(
    service_factory: Callable[[], KMSService],
) -> None:
    services = [service_factory() for _ in range(4)]
    services[0].create_key("hot", max_encryptions_per_version=50)
    seen: list[int] = []
    lock = threading.Lock()

    def run(service: KMSService) -> None:
        for _ in range(100):
            version = service.decrypt("hot", service.encrypt("hot", b"m").ciphertext).version
            with lock:
                seen.append(version)

    threads = [threading.Thread(target=run, args=(s,)) for s in services for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    per_version = Counter(seen)
    assert sum(per_version.values()) == 800
    assert max(per_version.values()) <= 50
    latest = services[0].get_key("hot").version
    assert sorted(per_version) == list(range(1, latest + 1))  # contiguous, none skipped


def test_a_lowered_limit_applies_to_the_current_version(service: KMSService) -> None:
    service.create_key("k")
    for _ in range(5):
        service.encrypt("k", b"x")
    service.update_key("k", max_encryptions_per_version=2)
    assert service.encrypt("k", b"x").version == 2


def test_decryptions_are_counted_when_flushed(service: KMSService) -> None:
    service.create_key("k")
    ciphertext = service.encrypt("k", b"x").ciphertext
    for _ in range(3):
        service.decrypt("k", ciphertext)
    service.flush_use()
    (version,) = service.get_key("k").key_versions
    assert version.decryptions == 3
    assert version.last_used_at is not None


@pytest.mark.parametrize("bad", ["0h", "59m", "30", "1.5d", "", "h", "-1d", 3600, None, "1H"])
def test_bad_rotation_periods_are_refused(bad: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_rotation_period(bad)


@pytest.mark.parametrize("bad", [0, 2**32 + 1, True, "10", 1.0])
def test_bad_limits_are_refused(service: KMSService, bad: object) -> None:
    with pytest.raises(InvalidRequest):
        service.create_key("k", max_encryptions_per_version=bad)  # type: ignore[arg-type]


def test_the_key_shows_its_period_and_next_rotation(service: KMSService) -> None:
    created = service.create_key("k", rotation_period="30d")
    assert created.rotation_period == "30d"
    assert created.next_rotation_at == created.created_at + timedelta(days=30)
    cleared = service.update_key("k", rotation_period=None)
    assert (cleared.rotation_period, cleared.next_rotation_at) == (None, None)


def test_rotate_due_rotates_only_due_keys(service: KMSService) -> None:
    service.create_key("hourly", rotation_period="1h")
    service.create_key("monthly", rotation_period="30d")
    service.create_key("never")
    assert service.rotate_due() == []
    rotated = service.rotate_due(now=utc_now() + timedelta(hours=2))
    assert [(r.key_id, r.version) for r in rotated] == [("hourly", 2)]
    assert service.rotate_due(now=utc_now() + timedelta(minutes=30)) == []


def test_use_totals_list_each_used_version_once_and_no_unused_one(service: KMSService) -> None:
    """The per-version counters the metrics page shows (docs/operations.md, Health and metrics:
    kms_key_version_encryptions / _decryptions): a version used only to encrypt and one used only
    to decrypt are both listed; a version never used is not."""
    service.create_key("k")
    old = service.encrypt("k", b"x").ciphertext
    service.encrypt("k", b"y")
    service.rotate_key("k")
    service.encrypt("k", b"z")
    service.decrypt("k", old)
    service.rotate_key("k")  # version 3: never used
    service.create_key("unused")
    service.flush_use()
    totals = sorted(service.use_totals())
    # The encryptions made, the decryptions, and the encryptions reserved: the blocks reserved
    # (docs/api.md: "including blocks reserved by running workers"), so at least what was used.
    assert [row[:4] for row in totals] == [("k", 1, 2, 1), ("k", 2, 1, 0)]
    assert totals[0][4] >= 2 and totals[1][4] >= 1
