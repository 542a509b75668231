"""docs/api.md: "Describe and label a key, at create or later (`description` up to 256
characters ...)". The API's schema types the description but does not bound it, so the service's
check is the only one, at create as at update; in process on a real SQLite file.
"""

from __future__ import annotations

import pytest

from kms.errors import InvalidRequest, KeyNotFound
from kms.service.keys import KMSService
from kms.service.keys.validation import MAX_DESCRIPTION_CHARS, MAX_PAGE_SIZE


def test_a_create_with_a_description_too_long_is_refused_and_makes_nothing(
    service: KMSService,
) -> None:
    with pytest.raises(InvalidRequest, match="description"):
        service.create_key("k", description="x" * (MAX_DESCRIPTION_CHARS + 1))
    with pytest.raises(KeyNotFound):
        service.get_key("k")
    made = service.create_key("k", description="x" * MAX_DESCRIPTION_CHARS)
    assert made.description == "x" * MAX_DESCRIPTION_CHARS


def test_a_create_with_a_minimum_above_1_or_a_deletion_flag_not_a_bool_makes_nothing(
    service: KMSService,
) -> None:
    """A new key has one version, so its only possible `min_decryption_version` is 1 (2 would
    fence the one version it has); `deletion_allowed` is true or false, not a truthy string.
    The service checks both itself: a caller other than the API's schema (a command, the Vault
    and AWS views) gets the same refusal."""
    with pytest.raises(InvalidRequest, match="min_decryption_version of a new key must be 1"):
        service.create_key("k", min_decryption_version=2)
    with pytest.raises(InvalidRequest, match="deletion_allowed must be true or false"):
        service.create_key("k", deletion_allowed="no")  # type: ignore[arg-type]
    with pytest.raises(KeyNotFound):
        service.get_key("k")
    assert service.create_key("k", min_decryption_version=1).min_decryption_version == 1


def test_a_listing_page_size_out_of_bounds_is_refused(service: KMSService) -> None:
    """docs/api.md: `limit` from 1 to MAX_PAGE_SIZE, checked by the service for every caller."""
    service.create_key("k")
    for limit in (0, MAX_PAGE_SIZE + 1):
        with pytest.raises(InvalidRequest, match="limit must be an integer from 1 to"):
            service.list_page(limit=limit)
    assert [key.key_id for key in service.list_page(limit=MAX_PAGE_SIZE).keys] == ["k"]


def test_a_listing_after_a_malformed_key_id_or_in_an_unknown_state_is_refused(
    service: KMSService,
) -> None:
    """A bad `after` or `state` is the caller's mistake (400), not an empty page."""
    service.create_key("k")
    with pytest.raises(InvalidRequest, match="key_id must be"):
        service.list_page(after="not a key id")
    with pytest.raises(InvalidRequest, match="state must be one of"):
        service.list_page(state="bogus")
    assert [key.key_id for key in service.list_page(after="a", state="enabled").keys] == ["k"]
