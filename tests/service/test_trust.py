"""A worker sees its own writes at once, whatever its row cache holds.

The row cache (``kms.cache_staleness_ms``) also notices writes through the change counter; here
the counter never moves (``marks`` is constant) and the staleness bound is a minute, so only the
worker's own forgetting (``TrustedRows.drop_row`` and ``forget``) stands between a write and a
stale row: a disabled key that still encrypts, a rotation not used, a recreated or trimmed key
served from its old version.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from kms.errors import InvalidCiphertext, KeyDisabled, KeyNotFound, VersionBelowMinimum
from kms.service.cache import KeyMaterialCache, KeyRowCache
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.store.records import utc_now
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import make_service


@pytest.fixture
def cached(repository: SQLKeyRepository, keyring: RootKeyring) -> KMSService:
    rows = KeyRowCache(60_000, lambda _key_id: 0)
    return make_service(repository, keyring, KeyMaterialCache(64), rows=rows)


def test_a_disable_is_seen_by_the_next_encrypt(cached: KMSService) -> None:
    cached.create_key("k")
    cached.encrypt("k", b"warm the cache")
    cached.disable_key("k")
    with pytest.raises(KeyDisabled):
        cached.encrypt("k", b"after")


def test_a_rotation_is_used_by_the_next_encrypt(cached: KMSService) -> None:
    cached.create_key("k")
    assert cached.encrypt("k", b"before").version == 1
    cached.rotate_key("k")
    assert cached.encrypt("k", b"after").version == 2


def test_a_key_deleted_and_created_again_encrypts_under_the_new_one(cached: KMSService) -> None:
    cached.create_key("k")
    old = cached.encrypt("k", b"old").ciphertext
    cached.delete_key("k")
    cached.create_key("k")
    new = cached.encrypt("k", b"new").ciphertext
    assert cached.decrypt("k", new).plaintext == b"new"
    with pytest.raises(InvalidCiphertext):
        cached.decrypt("k", old)


def test_a_trimmed_version_is_gone_at_once(cached: KMSService) -> None:
    cached.create_key("k")
    old = cached.encrypt("k", b"old").ciphertext
    cached.rotate_key("k")
    cached.update_key("k", min_decryption_version=2)
    cached.trim_key("k", 2)
    with pytest.raises((InvalidCiphertext, KeyNotFound, VersionBelowMinimum)):
        cached.decrypt("k", old)
    assert cached.get_key("k").min_available_version == 2


def test_a_key_destroyed_when_due_is_gone_at_once(cached: KMSService) -> None:
    cached.create_key("k")
    cached.encrypt("k", b"warm the cache")
    cached.delete_key("k", pending_days=1)
    assert cached.destroy_due(now=utc_now() + timedelta(days=2)) == ["k"]
    with pytest.raises(KeyNotFound):
        cached.encrypt("k", b"after")


def test_a_deleted_key_is_gone_at_once(cached: KMSService) -> None:
    cached.create_key("k")
    cached.encrypt("k", b"warm the row cache and the material cache")
    cached.delete_key("k")
    with pytest.raises(KeyNotFound):
        cached.encrypt("k", b"after")


def test_a_key_another_worker_deleted_and_this_one_created_is_the_new_one(
    cached: KMSService, service: KMSService
) -> None:
    cached.create_key("k")
    cached.encrypt("k", b"warm the cache")
    service.delete_key("k")  # another worker: this one's cache still holds the old row
    cached.create_key("k", description="the new one")
    assert cached.encrypt("k", b"new").version == 1
    assert service.decrypt("k", cached.encrypt("k", b"new").ciphertext).plaintext == b"new"
