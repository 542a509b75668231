"""Every bound ``kms.service.keys.validation`` enforces, at the bound and one past it, through
the service calls that apply it (in-process callers get the same checks as HTTP ones)."""

from __future__ import annotations

import pytest

from kms.errors import InvalidRequest, KeyNotFound
from kms.service.keys import KMSService
from kms.service.keys import validation as v


def test_page_size() -> None:
    assert v.validate_limit(1000) == 1000
    for refused in (0, 1001, True, "5"):
        with pytest.raises(InvalidRequest, match="limit must be an integer from 1 to 1000"):
            v.validate_limit(refused)


def test_labels_count_and_value_length() -> None:
    most = {f"l{n}": "x" * 256 for n in range(32)}
    assert v.validate_labels(most) == most
    with pytest.raises(InvalidRequest, match="at most 32 labels"):
        v.validate_labels(most | {"one-more": ""})
    with pytest.raises(InvalidRequest, match="at most 256 characters"):
        v.validate_labels({"long": "x" * 257})


def test_pending_days() -> None:
    assert v.validate_pending_days(30) == 30
    for refused in (0, 31, True):
        with pytest.raises(InvalidRequest, match="pending_days must be an integer from 1 to 30"):
            v.validate_pending_days(refused)


def test_rotation_period_bounds() -> None:
    assert v.parse_rotation_period("1h") == 3600
    assert v.parse_rotation_period("3650d") == 3650 * 86400
    with pytest.raises(InvalidRequest, match="at least 1h and at most 3650d"):
        v.parse_rotation_period("3651d")
    with pytest.raises(InvalidRequest, match="must look like"):
        v.parse_rotation_period("0h")


def test_max_encryptions_per_version() -> None:
    assert v.validate_max_encryptions(2**32) == 2**32
    for refused in (0, 2**32 + 1, True):
        with pytest.raises(InvalidRequest, match="from 1 to 4294967296"):
            v.validate_max_encryptions(refused)


def test_deletion_allowed_is_a_boolean() -> None:
    assert v.validate_deletion_allowed(False) is False
    with pytest.raises(InvalidRequest, match="deletion_allowed must be true or false"):
        v.validate_deletion_allowed(1)


def test_labels_are_stored_as_canonical_utf8_json() -> None:
    # The stored form is under the row MAC: a different spelling of equal labels would fail the
    # MAC of every row written before it.
    assert v.encode_labels({"team": "é", "a": "1"}) == '{"a":"1","team":"é"}'


@pytest.mark.parametrize("size", sorted(v.DATA_KEY_SIZES))
def test_data_keys_of_each_size(service: KMSService, size: int) -> None:
    service.create_key("data")
    assert len(service.generate_data_key("data", key_bytes=size).plaintext) == size


@pytest.mark.parametrize("size", [15, 17, 25, 33])
def test_other_data_key_sizes_are_refused(service: KMSService, size: int) -> None:
    service.create_key("data")
    with pytest.raises(InvalidRequest):
        service.generate_data_key("data", key_bytes=size)


def test_create_checks_its_fields(service: KMSService) -> None:
    bad_fields = [
        {"description": "x" * 257},
        {"deletion_allowed": 1},
        {"min_decryption_version": 2},  # a new key has one version
    ]
    for fields in bad_fields:
        with pytest.raises(InvalidRequest):
            service.create_key("checked", **fields)  # type: ignore[arg-type]
        with pytest.raises(KeyNotFound):
            service.get_key("checked")
    assert service.create_key("checked", description="x" * 256).description == "x" * 256


def test_update_checks_deletion_allowed(service: KMSService) -> None:
    service.create_key("checked")
    with pytest.raises(InvalidRequest, match="deletion_allowed"):
        service.update_key("checked", deletion_allowed=0)  # type: ignore[arg-type]
    assert service.get_key("checked").deletion_allowed is True


@pytest.mark.parametrize("pending_days", [0, 31, True])
def test_delete_checks_pending_days(service: KMSService, pending_days: int) -> None:
    service.create_key("kept")
    with pytest.raises(InvalidRequest, match="pending_days"):
        service.delete_key("kept", pending_days=pending_days)
    assert service.get_key("kept").state == "enabled"


def test_list_checks_the_state_filter(service: KMSService) -> None:
    with pytest.raises(InvalidRequest, match="state must be one of"):
        service.list_keys(state="deleted")


def test_pages_are_100_long_by_default(service: KMSService) -> None:
    for n in range(101):
        service.create_key(f"k{n:03d}")
    assert len(service.list_keys()) == 100
    for _ in range(100):
        service.rotate_key("k000")
    assert len(service.list_versions("k000")) == 100
