"""Pages of versions and keys (kms.service.keys.reading) and a data key's defaults, in process.
Found by ``make mutants`` (tools/mutants): the HTTP tests page through versions, but no
in-process test followed a version cursor, stopped a listing at its deadline, or asked for a
data key with the defaults."""

from __future__ import annotations

import itertools

import pytest

from kms.errors import InvalidRequest, ListingTimedOut
from kms.service.keys import KMSService
from kms.service.keys.results import DataKey


def test_a_version_page_starts_after_its_cursor(service: KMSService) -> None:
    service.create_key("paged")
    for _ in range(3):
        service.rotate_key("paged")
    assert [v.version for v in service.list_versions("paged", limit=2, after=1)] == [2, 3]
    rotations, more = service.list_rotations("paged", limit=2, after=2)
    assert ([v.version for v in rotations], more) == ([3, 4], False)
    with pytest.raises(InvalidRequest, match="after must be a version number"):
        service.list_versions("paged", after="1")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="after must be a version number"):
        service.list_rotations("paged", after="1")  # type: ignore[arg-type]


def test_a_listing_whose_deadline_passes_between_rows_is_stopped(service: KMSService) -> None:
    """``kms.list_deadline_ms`` is checked between rows too, not only by the database: a clock
    that moves past a whole deadline at each look stops the listing at its first row."""
    for index in range(3):
        service.create_key(f"slow-{index}")
    listing = service.list_page.__self__  # type: ignore[attr-defined]
    ticks = itertools.count(start=10**9, step=listing._list_deadline + 1)
    listing._monotonic = lambda: float(next(ticks))
    with pytest.raises(ListingTimedOut):
        service.list_page(limit=10)


def test_a_data_key_comes_with_its_plaintext_unless_asked_not_to(service: KMSService) -> None:
    service.create_key("envelopes")
    made = service.generate_data_key("envelopes")
    assert made.plaintext is not None and len(made.plaintext) == 32
    assert service.decrypt("envelopes", made.ciphertext).plaintext == made.plaintext
    assert service.generate_data_key("envelopes", include_plaintext=False).plaintext is None
    (item,) = service.generate_data_key_batch("envelopes", [{}])  # an item that says nothing
    assert isinstance(item, DataKey) and item.plaintext is not None and len(item.plaintext) == 32
