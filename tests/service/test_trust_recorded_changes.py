"""A key created, trimmed, recreated or destroyed by a request is noted for the request's audit
line with the generation the change raised (kms/api/audit.py: the answer to a change records
``key_generation``; ``kms check --audit`` compares the trail with the database), in process on a
real SQLite file.
"""

from __future__ import annotations

from collections.abc import Callable

from kms.service.keys import RECORDED_CHANGES, KMSService


def recorded(call: Callable[[], object]) -> list[tuple[str, int]]:
    changes: list[tuple[str, int]] = []
    token = RECORDED_CHANGES.set(changes)  # as the API does when a request arrives
    try:
        call()
    finally:
        RECORDED_CHANGES.reset(token)
    return changes


def test_a_destroy_is_recorded_with_a_generation_above_the_last_change(
    service: KMSService,
) -> None:
    (created,) = recorded(lambda: service.create_key("k"))
    (destroyed,) = recorded(lambda: service.delete_key("k"))
    assert destroyed[0] == "k"
    assert destroyed[1] > created[1]


def test_a_trim_and_a_recreate_are_recorded_with_a_newer_generation(service: KMSService) -> None:
    (created,) = recorded(lambda: service.create_key("k"))
    service.rotate_key("k")
    service.update_key("k", min_decryption_version=2)
    (trimmed,) = recorded(lambda: service.trim_key("k", 2))
    (recreated,) = recorded(lambda: service.recreate_key("k"))
    assert [key_id for key_id, _ in (trimmed, recreated)] == ["k", "k"]
    assert created[1] < trimmed[1] < recreated[1]
