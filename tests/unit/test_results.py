"""The service's results: a result a client rebuilds from an answer (its algorithm unknown)
equals the one the service made; the algorithm is for the metrics only."""

from __future__ import annotations

from typing import Any

import pytest

from kms.service.keys import DataKey, Decrypted, Encrypted, Signed
from kms.service.keys.results import UNKNOWN_ALGORITHM

RESULTS: list[tuple[type[Any], tuple[Any, ...]]] = [
    (Encrypted, ("orders", 2, "djI6...")),
    (Decrypted, ("orders", 2, b"plain")),
    (DataKey, ("orders", 2, "djI6...", b"k" * 32)),
    (Signed, ("releases", 1, b"signature")),
]


@pytest.mark.parametrize(("kind", "fields"), RESULTS)
def test_the_algorithm_is_not_part_of_a_results_identity(
    kind: type[Any], fields: tuple[Any, ...]
) -> None:
    made = kind(*fields, algorithm="AES-256-GCM")
    rebuilt = kind(*fields)
    assert rebuilt.algorithm == UNKNOWN_ALGORITHM
    assert made == rebuilt
    assert hash(made) == hash(rebuilt)
