"""The key fields' documented ranges at the service (docs/api.md, "Describe and label" and
"Rotation settings"): what each accepts at its edges and what it refuses, and how a period reads
back.

The HTTP tests (tests/http/test_bad_input.py) check the same through the schemas,
which refuse most bad values before the service sees them; these check the service's own rules,
which every caller (the CLI's operator commands included) goes through.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from kms.errors import DeletionNotAllowed, InvalidRequest, KeyPendingDeletion, VersionBelowMinimum
from kms.service.keys import KMSService
from kms.service.keys.validation import MAX_LABEL_VALUE_CHARS, MAX_LABELS
from kms.store.records import utc_now


@pytest.mark.parametrize("period", ["1h", "2h", "36h", "25h", "1d", "30d", "3650d"])
def test_a_rotation_period_reads_back_as_written(service: KMSService, period: str) -> None:
    assert service.create_key("k", rotation_period=period).rotation_period == period


def test_hours_that_make_whole_days_read_back_in_days(service: KMSService) -> None:
    assert service.create_key("k", rotation_period="48h").rotation_period == "2d"


@pytest.mark.parametrize("limit", [1, 2, 2**32])
def test_max_encryptions_per_version_accepts_1_to_2_to_the_32(
    service: KMSService, limit: int
) -> None:
    assert service.create_key(
        "k", max_encryptions_per_version=limit
    ).max_encryptions_per_version == (limit)
    assert service.update_key(
        "k", max_encryptions_per_version=limit
    ).max_encryptions_per_version == (limit)


@pytest.mark.parametrize("limit", [0, -1, 2**32 + 1, True, "5", 1.0])
def test_max_encryptions_per_version_refuses_the_rest(service: KMSService, limit: object) -> None:
    with pytest.raises(InvalidRequest, match="max_encryptions_per_version"):
        service.create_key("k", max_encryptions_per_version=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["Team", "a b", "", "x" * 64, "naïve", "team!"])
def test_a_label_name_outside_the_pattern_is_refused(service: KMSService, name: str) -> None:
    with pytest.raises(InvalidRequest, match="labels: names"):
        service.create_key("k", labels={name: "v"})
    service.create_key("k")
    with pytest.raises(InvalidRequest, match="labels: names"):
        service.update_key("k", labels={name: "v"})
    assert service.get_key("k").labels == {}


def test_label_names_and_values_at_their_limits_are_accepted(service: KMSService) -> None:
    labels = {f"n{index}": "v" for index in range(MAX_LABELS - 1)}
    labels["a_b.c-" + "d" * 57] = "x" * MAX_LABEL_VALUE_CHARS
    assert service.create_key("k", labels=labels).labels == labels


@pytest.mark.parametrize("value", ["x" * (MAX_LABEL_VALUE_CHARS + 1), 5, None])
def test_a_label_value_too_long_or_not_a_string_is_refused(
    service: KMSService, value: object
) -> None:
    with pytest.raises(InvalidRequest, match="labels: values"):
        service.create_key("k", labels={"team": value})  # type: ignore[dict-item]


def test_more_than_32_labels_are_refused(service: KMSService) -> None:
    with pytest.raises(InvalidRequest, match="at most 32 labels"):
        service.create_key("k", labels={f"n{index}": "v" for index in range(MAX_LABELS + 1)})


def test_a_trim_to_version_1_changes_nothing(service: KMSService) -> None:
    service.create_key("k")
    first = service.encrypt("k", b"made under version 1").ciphertext
    service.rotate_key("k")
    assert service.trim_key("k", min_available_version=1).min_available_version == 1
    assert service.decrypt("k", first).plaintext == b"made under version 1"


@pytest.mark.parametrize("bad", [0, -3, True, "2", 2.0])
def test_a_trim_below_1_or_not_an_integer_is_refused(service: KMSService, bad: object) -> None:
    service.create_key("k")
    with pytest.raises(InvalidRequest, match="min_available_version must be a positive integer"):
        service.trim_key("k", min_available_version=bad)  # type: ignore[arg-type]


def test_a_description_too_long_is_refused_by_an_update_too(service: KMSService) -> None:
    service.create_key("k", description="first")
    with pytest.raises(InvalidRequest, match="description"):
        service.update_key("k", description="x" * 257)
    assert service.get_key("k").description == "first"


def test_deletion_allowed_false_refuses_a_scheduled_deletion_too(service: KMSService) -> None:
    """docs/api.md, key states: `deletion_allowed` false refuses DELETE, with or without
    ``pending_days``; the key stays enabled."""
    service.create_key("k", deletion_allowed=False)
    with pytest.raises(DeletionNotAllowed):
        service.delete_key("k", pending_days=7)
    assert service.get_key("k").state == "enabled"


def test_destroy_due_reports_each_key_it_destroys(service: KMSService) -> None:
    """`kms destroy-due` prints each key it destroyed: the service hands each to the caller."""
    service.create_key("due")
    service.create_key("kept")
    service.delete_key("due", pending_days=1)
    reported: list[str] = []
    later = utc_now() + timedelta(days=2)
    destroyed = service.destroy_due(later, on_destroyed=lambda info: reported.append(info.key_id))
    assert destroyed == reported == ["due"]


@pytest.mark.parametrize("period", ["3651d", "87601h"])
def test_a_rotation_period_above_3650_days_is_refused(service: KMSService, period: str) -> None:
    with pytest.raises(InvalidRequest, match="at most 3650d"):
        service.create_key("k", rotation_period=period)


def test_labels_that_are_not_an_object_are_refused(service: KMSService) -> None:
    with pytest.raises(InvalidRequest, match="labels must be an object"):
        service.create_key("k", labels=["team"])  # type: ignore[arg-type]


def test_a_list_filtered_by_state_holds_only_that_state(service: KMSService) -> None:
    for key_id in ("a", "b", "c"):
        service.create_key(key_id)
    service.disable_key("b")
    assert [info.key_id for info in service.list_keys(state="disabled")] == ["b"]
    assert [info.key_id for info in service.list_keys(state="enabled")] == ["a", "c"]


def test_a_key_pending_deletion_is_not_rotated(service: KMSService) -> None:
    service.create_key("k")
    service.delete_key("k", pending_days=7)
    with pytest.raises(KeyPendingDeletion):
        service.rotate_key("k")


def test_min_decryption_version_fences_the_public_key_of_older_versions(
    service: KMSService,
) -> None:
    """docs/api.md, key states: versions below ``min_decryption_version`` are fenced off for
    verify and for their public key."""
    service.create_key("s", purpose="sign", algorithm="Ed25519")
    service.rotate_key("s")
    service.update_key("s", min_decryption_version=2)
    assert service.public_key("s", 2).version == 2
    with pytest.raises(VersionBelowMinimum):
        service.public_key("s", 1)


def test_a_key_pending_deletion_refuses_every_change_but_cancel(service: KMSService) -> None:
    """docs/api.md, key states: a key pending deletion is 409 to a PATCH, an enable, a disable and
    another DELETE; only cancel-deletion takes it out."""
    service.create_key("k")
    service.delete_key("k", pending_days=7)
    for change in (
        lambda: service.delete_key("k"),
        lambda: service.delete_key("k", pending_days=3),
        lambda: service.enable_key("k"),
        lambda: service.disable_key("k"),
        lambda: service.update_key("k", description="x"),
        lambda: service.trim_key("k", 1),
        lambda: service.recreate_key("k"),
    ):
        with pytest.raises(KeyPendingDeletion):
            change()
    assert service.cancel_deletion("k").state == "disabled"


def test_deletion_allowed_false_refuses_a_recreate(service: KMSService) -> None:
    """docs/api.md, key states: `deletion_allowed` false refuses DELETE and recreate."""
    service.create_key("k", deletion_allowed=False)
    with pytest.raises(DeletionNotAllowed):
        service.recreate_key("k")
