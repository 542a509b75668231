"""The wait a throttled request is told (``Retry-After``, docs/security.md: "a request that finds
none gets 429 ... with `Retry-After` (seconds)"): the whole seconds until a token is back, never
more than one token's refill time (1 / ``rate``), in process on a real bucket file.
"""

from __future__ import annotations

import math
from pathlib import Path

from kms.ratelimit import SharedTokenBuckets, create_table

RATE = 0.01  # a token every 100 s: the test's own pauses refill a negligible share of one


def test_the_wait_is_the_time_until_one_token_is_back(tmp_path: Path) -> None:
    path = tmp_path / "buckets"
    create_table(path)
    buckets = SharedTokenBuckets(path, rate=RATE, burst=1)
    assert buckets.take("client") == 0  # the burst
    wait = buckets.take("client")
    assert 1 <= wait <= math.ceil(1 / RATE)
