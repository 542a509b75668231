"""docs/api.md: "Describe and label a key, at create or later (`description` up to 256
characters ...)". The API's schema types the description but does not bound it, so the service's
check is the only one, at create as at update; in process on a real SQLite file.
"""

from __future__ import annotations

import pytest

from kms.errors import InvalidRequest, KeyNotFound
from kms.service.keys import KMSService
from kms.service.keys.validation import MAX_DESCRIPTION_CHARS


def test_a_create_with_a_description_too_long_is_refused_and_makes_nothing(
    service: KMSService,
) -> None:
    with pytest.raises(InvalidRequest, match="description"):
        service.create_key("k", description="x" * (MAX_DESCRIPTION_CHARS + 1))
    with pytest.raises(KeyNotFound):
        service.get_key("k")
    made = service.create_key("k", description="x" * MAX_DESCRIPTION_CHARS)
    assert made.description == "x" * MAX_DESCRIPTION_CHARS
