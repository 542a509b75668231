"""The counters kms.api.metrics moves from the service into Prometheus (``_CacheCounts``): the
material cache's hits and misses and the rows the service refused
(``kms_integrity_failures_total{kind}``, docs/operations.md), each counted from the first one.
"""

from __future__ import annotations

from prometheus_client import REGISTRY

from kms.api.metrics import _CacheCounts
from kms.service.cache import KeyMaterialCache


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_first_hit_miss_and_refused_row_are_counted() -> None:
    cache = KeyMaterialCache(4)
    refused = {"mac": 0, "rollback": 0}
    counts = _CacheCounts(cache, refused)
    before = {
        "hits": sample("kms_key_cache_hits_total"),
        "misses": sample("kms_key_cache_misses_total"),
        "mac": sample("kms_integrity_failures_total", kind="mac"),
        "rollback": sample("kms_integrity_failures_total", kind="rollback"),
    }

    cache.put("a", object())
    assert cache.get("a") is not None  # one hit
    assert cache.get("b") is None  # one miss
    refused["mac"] += 1
    refused["rollback"] += 1
    counts.publish()
    counts.publish()  # nothing new: nothing added

    assert sample("kms_key_cache_hits_total") - before["hits"] == 1
    assert sample("kms_key_cache_misses_total") - before["misses"] == 1
    assert sample("kms_integrity_failures_total", kind="mac") - before["mac"] == 1
    assert sample("kms_integrity_failures_total", kind="rollback") - before["rollback"] == 1


def test_each_publish_adds_only_what_is_new_since_the_last() -> None:
    """The cache and the service keep running totals; each scrape adds the difference to the
    counters, so after two scrapes a counter has moved by the total, not more."""
    cache = KeyMaterialCache(4)
    refused = {"mac": 0}
    counts = _CacheCounts(cache, refused)
    before = {
        "hits": sample("kms_key_cache_hits_total"),
        "misses": sample("kms_key_cache_misses_total"),
        "mac": sample("kms_integrity_failures_total", kind="mac"),
    }
    cache.put("a", object())
    for _ in range(2):  # one hit, one miss and one refused row before each publish
        assert cache.get("a") is not None
        assert cache.get("b") is None
        refused["mac"] += 1
        counts.publish()

    assert sample("kms_key_cache_hits_total") - before["hits"] == 2
    assert sample("kms_key_cache_misses_total") - before["misses"] == 2
    assert sample("kms_integrity_failures_total", kind="mac") - before["mac"] == 2
