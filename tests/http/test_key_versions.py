"""A key rotated 200 times over HTTPS: verify tries only the newest 16 versions, the key's detail
lists its newest 100, and GET /v1/kms/keys/{key_id}/versions pages through all 201."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.harness import (
    KMSClient,
    b64,
    create_key,
    expect_error,
    expect_json,
    unique_key_id,
)
from tests.http.test_lifecycle import VERSION_FIELDS

pytestmark = pytest.mark.slow

MESSAGE = b64(b"release 1.2.3")


@pytest.fixture(scope="module")
def busy_key(client: KMSClient) -> tuple[str, dict[int, str]]:
    """A sign key with versions 1..201, and the signature each version made over MESSAGE."""
    key_id = unique_key_id("busy")
    create_key(client, key_id=key_id, purpose="sign", algorithm="Ed25519")
    signatures: dict[int, str] = {}
    for version in range(1, 202):
        if version > 1:
            rotated = expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
            assert rotated["version"] == version
        signed = expect_json(
            client.post("/v1/kms/sign", json={"key_id": key_id, "message": MESSAGE}), 200
        )
        assert signed["version"] == version
        signatures[version] = signed["signature"]
    return key_id, signatures


def verify(client: KMSClient, key_id: str, signature: str) -> dict[str, Any]:
    body = {"key_id": key_id, "message": MESSAGE, "signature": signature}
    return expect_json(client.post("/v1/kms/verify", json=body), 200)


def test_verify_tries_only_the_newest_16_versions(
    client: KMSClient, busy_key: tuple[str, dict[int, str]]
) -> None:
    key_id, signatures = busy_key
    assert verify(client, key_id, signatures[201]) == {"valid": True}
    assert verify(client, key_id, signatures[186]) == {"valid": True}  # the 16th newest
    assert verify(client, key_id, signatures[185]) == {
        "valid": False,
        "error": "signature invalid",
    }
    assert verify(client, key_id, signatures[1])["valid"] is False


def test_key_detail_lists_the_newest_100_versions(
    client: KMSClient, busy_key: tuple[str, dict[int, str]]
) -> None:
    key_id, _ = busy_key
    detail = expect_json(client.get(f"/v1/kms/keys/{key_id}"), 200)
    assert detail["version"] == 201
    assert [v["version"] for v in detail["key_versions"]] == list(range(102, 202))


@pytest.mark.parametrize("page_size", [1000, 100, 7])
def test_the_versions_endpoint_pages_through_all_201(
    client: KMSClient, busy_key: tuple[str, dict[int, str]], page_size: int
) -> None:
    key_id, _ = busy_key
    seen: list[int] = []
    params: dict[str, int] = {"limit": page_size}
    while True:
        page = expect_json(client.get(f"/v1/kms/keys/{key_id}/versions", params=params), 200)
        assert len(page) <= page_size
        if not page:
            break
        for entry in page:
            assert set(entry) == VERSION_FIELDS, entry
        seen.extend(entry["version"] for entry in page)
        params = {"limit": page_size, "after": page[-1]["version"]}
    assert seen == list(range(1, 202))


def test_the_versions_endpoint_defaults_to_100(
    client: KMSClient, busy_key: tuple[str, dict[int, str]]
) -> None:
    key_id, _ = busy_key
    page = expect_json(client.get(f"/v1/kms/keys/{key_id}/versions"), 200)
    assert [entry["version"] for entry in page] == list(range(1, 101))


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=1001", "limit=x", "after=-1", "after=1.5", "before=3"],
)
def test_the_versions_endpoint_refuses_a_bad_query(
    client: KMSClient, busy_key: tuple[str, dict[int, str]], query: str
) -> None:
    key_id, _ = busy_key
    expect_error(client.get(f"/v1/kms/keys/{key_id}/versions?{query}"), 400)


def test_the_versions_of_an_unknown_key_are_not_found(client: KMSClient) -> None:
    absent = unique_key_id("absent")
    expect_error(
        client.get(f"/v1/kms/keys/{absent}/versions"), 404, f'record not found: key "{absent}"'
    )
