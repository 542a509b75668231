"""A process's unused reservation of encryptions (kms.service.keys.limits.EncryptionBudget) is
kept when a batch larger than it reserves a new block: a version still makes exactly
``max_encryptions_per_version`` encryptions (README, use limits), in process on a real SQLite
file.
"""

from __future__ import annotations

from collections import Counter

from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys.limits import block_size
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import make_service

LIMIT = 40
BLOCK = 8


def test_a_batch_larger_than_the_reservation_left_keeps_what_was_left(
    initialised: Settings, keyring: RootKeyring
) -> None:
    block = block_size(BLOCK, LIMIT)
    assert block > 1  # else nothing is reserved ahead
    repository = SQLKeyRepository(create_kms_engine(initialised.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(1024), encryption_block=BLOCK)
        service.create_key("k", max_encryptions_per_version=LIMIT)
        used: Counter[int] = Counter()
        used[service.encrypt("k", b"x").version] += 1  # reserves a block: block - 1 left
        batch = service.encrypt_batch("k", [{"plaintext": b"%d" % i} for i in range(block)])
        used.update(item.version for item in batch)  # more than is left: a new block
        while 2 not in used:
            used[service.encrypt("k", b"x").version] += 1
        assert used == {1: LIMIT, 2: 1}
    finally:
        repository.close()
