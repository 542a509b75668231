"""The key material cache: bounded (``kms.key_cache_size``), least recently used out first, and
counting the hits and misses that ``kms_key_cache_hits_total`` / ``_misses_total`` report.

Found by ``make mutants``: the service tests go through the cache but never fill it, so its
eviction order, its bound and its counters could change unseen.
"""

from __future__ import annotations

from kms.service.cache import KeyMaterialCache


def entry(key_id: str, version: int = 1) -> tuple[str, str, int, int]:
    return ("aead", key_id, 1, version)


def test_a_new_cache_has_counted_nothing() -> None:
    cache = KeyMaterialCache(4)
    assert (cache.hits, cache.misses) == (0, 0)


def test_hits_and_misses_are_counted_one_per_lookup() -> None:
    cache = KeyMaterialCache(4)
    assert cache.get(entry("a")) is None
    cache.put(entry("a"), "material-a")
    assert cache.get(entry("a")) == "material-a"
    assert cache.get(entry("a")) == "material-a"
    assert cache.get(entry("b")) is None
    assert (cache.hits, cache.misses) == (2, 2)


def test_holds_at_most_max_entries_and_evicts_the_least_recently_used() -> None:
    cache = KeyMaterialCache(2)
    cache.put(entry("a"), "material-a")
    cache.put(entry("b"), "material-b")
    assert cache.get(entry("a")) == "material-a"  # a is now the most recently used
    cache.put(entry("c"), "material-c")
    assert cache.get(entry("b")) is None
    assert cache.get(entry("a")) == "material-a"
    assert cache.get(entry("c")) == "material-c"


def test_putting_an_entry_again_makes_it_the_most_recently_used() -> None:
    cache = KeyMaterialCache(2)
    cache.put(entry("a"), "material-a")
    cache.put(entry("b"), "material-b")
    cache.put(entry("a"), "material-a")
    cache.put(entry("c"), "material-c")
    assert cache.get(entry("a")) == "material-a"
    assert cache.get(entry("b")) is None


def test_exactly_max_entries_fit() -> None:
    cache = KeyMaterialCache(3)
    for key_id in "abc":
        cache.put(entry(key_id), f"material-{key_id}")
    assert all(cache.get(entry(key_id)) is not None for key_id in "abc")


def test_size_zero_caches_nothing() -> None:
    cache = KeyMaterialCache(0)
    cache.put(entry("a"), "material-a")
    assert cache.get(entry("a")) is None


def test_drop_key_drops_every_version_of_that_key_only() -> None:
    cache = KeyMaterialCache(8)
    cache.put(entry("a", 1), "a1")
    cache.put(entry("a", 2), "a2")
    cache.put(entry("b", 1), "b1")
    cache.drop_key("a")
    assert cache.get(entry("a", 1)) is None
    assert cache.get(entry("a", 2)) is None
    assert cache.get(entry("b", 1)) == "b1"


def test_clear_empties_the_cache() -> None:
    cache = KeyMaterialCache(8)
    cache.put(entry("a"), "material-a")
    cache.clear()
    assert cache.get(entry("a")) is None
    assert "entries=0" in repr(cache)


def test_size_one_holds_the_last_entry() -> None:
    cache = KeyMaterialCache(1)
    cache.put(entry("a"), "material-a")
    assert cache.get(entry("a")) == "material-a"
    cache.put(entry("b"), "material-b")
    assert cache.get(entry("a")) is None
    assert cache.get(entry("b")) == "material-b"
