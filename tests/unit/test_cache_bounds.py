"""The byte bound of both worker caches: "each cache is bounded by ``kms.key_cache_size`` entries
and by ``kms.key_cache_bytes`` bytes" (docs/operations.md, Memory), least recently used out first.

Found by ``make mutants``: the service tests never fill the key-row cache, put a row twice,
or clear it, so its byte count (what the bound is checked against), its eviction order and its
clearing (a lost PostgreSQL listener "drops every cached row") could change unseen.
"""

from __future__ import annotations

from datetime import UTC, datetime

from kms.service.cache import ROW_BASE_BYTES, KeyMaterialCache, KeyRowCache, row_bytes
from kms.service.keys.material import material_bytes
from kms.store.records import KeyRecord


def record(key_id: str, **fields: object) -> KeyRecord:
    return KeyRecord(
        key_id=key_id,
        purpose="ENCRYPT_DECRYPT",
        algorithm="AES_256_GCM",
        state="enabled",
        latest_version=1,
        incarnation="i1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        **fields,  # type: ignore[arg-type]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rows(max_entries: int = 8, max_bytes: int = 2**40, clock: Clock | None = None) -> KeyRowCache:
    """A cache whose change counters never move: only the bounds and the clock drop a row."""
    return KeyRowCache(
        1000,
        lambda _key_id: 7,
        max_entries=max_entries,
        max_bytes=max_bytes,
        clock=clock or Clock(),
    )


def test_a_row_counts_its_base_and_each_text_field() -> None:
    assert row_bytes(record("k")) == ROW_BASE_BYTES + len("{}") + len("k")
    longer = record(
        "key-0123", description="d" * 100, labels='{"a":"b"}', last_use_attempt="x" * 50
    )
    assert row_bytes(longer) == ROW_BASE_BYTES + 100 + len('{"a":"b"}') + 50 + len("key-0123")


def test_a_row_put_again_is_counted_once() -> None:
    cache = rows()
    assert cache.size_bytes == 0
    cache.put(record("a"), 7, cache.now())
    cache.put(record("a"), 7, cache.now())
    assert (len(cache), cache.size_bytes) == (1, row_bytes(record("a")))


def test_the_byte_bound_evicts_the_least_recently_put_rows() -> None:
    size = row_bytes(record("a"))
    cache = rows(max_bytes=2 * size)
    for key_id in "abc":
        cache.put(record(key_id), 7, cache.now())
    assert cache.size_bytes == 2 * size
    assert cache.get("a") is None
    assert cache.get("b") is not None and cache.get("c") is not None


def test_putting_a_row_again_makes_it_the_most_recently_used() -> None:
    cache = rows(max_entries=2)
    cache.put(record("a"), 7, cache.now())
    cache.put(record("b"), 7, cache.now())
    cache.put(record("a"), 7, cache.now())
    cache.put(record("c"), 7, cache.now())
    assert cache.get("a") is not None
    assert cache.get("b") is None


def test_a_cache_of_one_row_keeps_the_last_row_put() -> None:
    """``kms.key_cache_size: 1`` is a cache of one row, not none."""
    cache = rows(max_entries=1)
    cache.put(record("a"), 7, cache.now())
    assert cache.get("a") == record("a")
    cache.put(record("b"), 7, cache.now())
    assert cache.get("a") is None and cache.get("b") == record("b")


def test_a_row_too_large_for_the_bound_is_not_cached() -> None:
    cache = rows(max_bytes=row_bytes(record("a")) - 1)
    cache.put(record("a"), 7, cache.now())
    assert (len(cache), cache.size_bytes) == (0, 0)


def test_a_stale_row_is_dropped_and_its_bytes_freed() -> None:
    clock = Clock()
    cache = rows(clock=clock)
    cache.put(record("a"), 7, clock())
    clock.now += 1.0  # the staleness bound, 1000 ms
    assert cache.get("a") is None
    assert (len(cache), cache.size_bytes) == (0, 0)


def test_clearing_the_rows_frees_every_byte() -> None:
    cache = rows()
    cache.put(record("a"), 7, cache.now())
    cache.put(record("b"), 7, cache.now())
    cache.clear()
    assert (len(cache), cache.size_bytes) == (0, 0)
    cache.put(record("a"), 7, cache.now())
    assert cache.size_bytes == row_bytes(record("a"))


def test_material_put_again_is_counted_once_and_clearing_frees_every_byte() -> None:
    cache = KeyMaterialCache(8, max_bytes=1000)
    cache.put(("aead", "a", 1, 1), "material", size=10)
    cache.put(("aead", "a", 1, 1), "material", size=10)
    assert cache.size_bytes == 10
    cache.clear()
    assert cache.size_bytes == 0
    cache.put(("aead", "a", 1, 1), "material", size=10)
    assert cache.size_bytes == 10


def test_loaded_keys_are_counted_at_their_measured_sizes() -> None:
    """What ``kms.key_cache_bytes`` is checked against (kms.service.keys.material, measured
    RSS): a private RSA key four times its public one and growing with its bits, ECDSA private
    keys 1 KB, everything else half that."""
    assert material_bytes("RSA-3072") == 6144 and material_bytes("RSA-3072", public=True) == 1536
    assert material_bytes("RSA-OAEP-2048") == 4096
    assert material_bytes("ECDSA-P256") == 1024
    assert material_bytes("ECDSA-P256", public=True) == 512
    assert material_bytes("AES-256-GCM") == material_bytes("Ed25519") == 512
