"""A worker's soft open-file limit (kms.server.limits.raise_file_limit, docs/security.md: "Each
worker raises its soft open-file limit to fit `server.max_connections` plus 256 (up to the hard
limit ...) and logs a warning if it cannot"), on this test process's own limit, restored after.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from kms.server.limits import raise_file_limit

LOG = logging.getLogger("kms.test.open_file_limit")


@pytest.fixture
def hard_limit() -> Iterator[int]:
    """This process's hard limit, made finite if it was not (a limit can be lowered, never
    raised again: 65,536 is far more than any test of this process opens); the soft one
    restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard, soft = 65_536, min(soft, 65_536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if hard < 4096:
        pytest.fail(f"the test needs a hard open-file limit of 4096 or more, not {hard}")
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def soft_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_a_low_soft_limit_is_raised_to_the_cap_plus_256(
    hard_limit: int, caplog: pytest.LogCaptureFixture
) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard_limit))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        raise_file_limit(1000, LOG)
    assert soft_limit() == 1000 + 256
    assert not caplog.records


def test_a_soft_limit_that_fits_is_left_as_it_is(
    hard_limit: int, caplog: pytest.LogCaptureFixture
) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (3000, hard_limit))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        raise_file_limit(1000, LOG)
    assert soft_limit() == 3000
    assert not caplog.records


def test_past_the_hard_limit_the_soft_limit_goes_to_it_and_a_warning_says_so(
    hard_limit: int, caplog: pytest.LogCaptureFixture
) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard_limit))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        raise_file_limit(hard_limit, LOG)
    assert soft_limit() == hard_limit
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"open-file limit {hard_limit} is below server.max_connections + 256; raise LimitNOFILE"
    )
