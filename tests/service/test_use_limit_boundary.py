"""The encryption limit per version, at its exact boundary (README, use limits).

With ``max_encryptions_per_version`` N, a version makes exactly N encryptions: the Nth is still
under it, the next is under a new version kms rotates to by itself. The count the database keeps
per version (what processes reserved, in blocks of ``encryption_block``) never passes N, and is
never below what was used. A batch counts each item; one larger than N is refused whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from kms.errors import InvalidRequest
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.service.keys.limits import block_size
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import make_service


@pytest.fixture
def service_with_block(
    initialised: Settings, keyring: RootKeyring
) -> Iterator[Callable[[int], KMSService]]:
    repositories: list[SQLKeyRepository] = []

    def build(encryption_block: int) -> KMSService:
        repository = SQLKeyRepository(create_kms_engine(initialised.database_url))
        repositories.append(repository)
        return make_service(
            repository, keyring, KeyMaterialCache(1024), encryption_block=encryption_block
        )

    yield build
    for repository in repositories:
        repository.close()


def stored_counts(service: KMSService, key_id: str) -> dict[int, int]:
    """Encryptions the database counts against each version."""
    return {v.version: v.encryptions for v in service.get_key(key_id).key_versions}


# (limit, encryption_block): a block of 1; blocks that end exactly on the limit; a last block
# cut short by the limit (9 = 4 blocks of 2, then 1).
BOUNDARIES = [(1, 1), (3, 1), (3, 64), (16, 2), (24, 3), (9, 2)]


@pytest.mark.parametrize(("limit", "block"), BOUNDARIES)
def test_the_nth_encryption_is_the_last_of_its_version(
    service_with_block: Callable[[int], KMSService], limit: int, block: int
) -> None:
    service = service_with_block(block)
    service.create_key("k", max_encryptions_per_version=limit)
    used: Counter[int] = Counter()
    reserved_ahead = False
    for count in range(1, limit + 1):
        encrypted = service.encrypt("k", b"x")
        assert encrypted.version == 1, f"encryption {count} of {limit}"
        used[encrypted.version] += 1
        stored = stored_counts(service, "k")
        assert count <= stored[1] <= limit
        reserved_ahead |= stored[1] > count
    assert stored_counts(service, "k") == {1: limit}
    # The cases with blocks of more than one do reserve ahead (the limit caps the block).
    assert reserved_ahead is (block_size(block, limit) > 1)

    following = service.encrypt("k", b"x")
    assert following.version == 2  # rotated by kms, not refused
    used[following.version] += 1
    stored = stored_counts(service, "k")
    assert stored[1] == limit
    assert 1 <= stored[2] <= limit
    assert used == {1: limit, 2: 1}
    assert service.decrypt("k", following.ciphertext).version == 2


@pytest.mark.parametrize(("limit", "block"), [(3, 1), (16, 2)])
def test_a_limit_set_on_the_service_applies_alike(
    initialised: Settings, keyring: RootKeyring, limit: int, block: int
) -> None:
    repository = SQLKeyRepository(create_kms_engine(initialised.database_url))
    try:
        service = make_service(
            repository,
            keyring,
            KeyMaterialCache(1024),
            max_encryptions_per_version=limit,
            encryption_block=block,
        )
        service.create_key("k")
        versions = [service.encrypt("k", b"x").version for _ in range(limit + 1)]
        assert versions == [1] * limit + [2]
        assert stored_counts(service, "k")[1] == limit
    finally:
        repository.close()


@pytest.mark.parametrize("block", [1, 2])
def test_a_batch_that_would_cross_the_limit_goes_whole_to_the_next_version(
    service_with_block: Callable[[int], KMSService], block: int
) -> None:
    service = service_with_block(block)
    service.create_key("k", max_encryptions_per_version=3)
    assert [service.encrypt("k", b"x").version for _ in range(2)] == [1, 1]
    # One left under version 1, two asked for: version 1 stops at 2 rather than pass 3.
    batch = service.encrypt_batch("k", [{"plaintext": b"a"}, {"plaintext": b"b"}])
    assert [item.version for item in batch] == [2, 2]
    stored = stored_counts(service, "k")
    assert stored[1] <= 3 and stored[2] == 2


def test_a_batch_of_exactly_the_limit_fits_one_version(
    service_with_block: Callable[[int], KMSService],
) -> None:
    service = service_with_block(1)
    service.create_key("k", max_encryptions_per_version=3)
    batch = service.encrypt_batch("k", [{"plaintext": b"%d" % i} for i in range(3)])
    assert [item.version for item in batch] == [1, 1, 1]
    assert stored_counts(service, "k") == {1: 3}
    assert service.encrypt("k", b"x").version == 2
    assert stored_counts(service, "k") == {1: 3, 2: 1}


@pytest.mark.parametrize("operation", ["encrypt_batch", "generate_data_key_batch"])
def test_a_batch_larger_than_the_limit_is_refused_and_counts_nothing(
    service_with_block: Callable[[int], KMSService], operation: str
) -> None:
    service = service_with_block(1)
    service.create_key("k", max_encryptions_per_version=3)
    assert service.encrypt("k", b"x").version == 1
    items = [{"plaintext": b"x"} if operation == "encrypt_batch" else {} for _ in range(4)]
    with pytest.raises(InvalidRequest, match="exceed the key's limit of 3"):
        getattr(service, operation)("k", items)
    assert stored_counts(service, "k") == {1: 1}
    assert [service.encrypt("k", b"x").version for _ in range(3)] == [1, 1, 2]
