"""Odd paths and repeated query parameters over real gunicorn: always ``{"error": ...}`` with a
4xx, never a redirect or an HTML page.

Requests are written with http.client so that the path reaches the server byte for byte (requests
and urllib3 would normalise dot segments before sending).
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from contextlib import closing

import pytest

from tests.helpers.harness import (
    REQUEST_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    ServerProcess,
    create_key,
    expect_json,
    unique_key_id,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def raw(server: ServerProcess) -> Iterator[http.client.HTTPSConnection]:
    deployment: Deployment = server.deployment
    context = ssl.create_default_context(cafile=str(deployment.ca_cert))
    context.load_cert_chain(str(deployment.client_cert), str(deployment.client_key))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", deployment.port, context=context, timeout=REQUEST_TIMEOUT_SECONDS
    )
    with closing(connection):
        yield connection


def get_raw(connection: http.client.HTTPSConnection, path: str) -> tuple[int, dict, str]:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read().decode("utf-8", errors="replace")
    return response.status, dict(response.getheaders()), body


def assert_json_error(status: int, headers: dict, body: str, expected_status: int) -> str:
    assert status == expected_status, (status, body)
    assert "Location" not in headers, headers
    assert headers.get("Content-Type") == "application/json", headers
    assert "<" not in body, body  # no HTML
    document = json.loads(body)
    assert set(document) == {"error"} and document["error"], document
    return document["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/kms/keys/%2E%2E%2F/public-key",
        "/v1/kms/keys/..//public-key",
        "/v1/kms/keys/%2e%2e%2f%2e%2e%2f/public-key",
        "/v1//kms/keys",
        "/v1/kms//keys/orders",
        "/v1/kms/keys//",
        "/v1/kms/keys/",
        "/v1/kms/keys/orders/",
        "/v1/kms/keys/orders/public-key/",
        "/v1/kms/keys/orders/versions/",
        "/v1/kms/keys/../../etc/passwd",
    ],
)
def test_odd_paths_are_a_json_404_without_redirect(
    raw: http.client.HTTPSConnection, path: str
) -> None:
    assert_json_error(*get_raw(raw, path), 404)


@pytest.mark.parametrize("path", ["/v1/kms/keys/%2E%2E/public-key", "/v1/kms/keys/../versions"])
def test_dot_dot_as_a_key_id_is_an_invalid_key_id(
    raw: http.client.HTTPSConnection, path: str
) -> None:
    assert "key_id" in assert_json_error(*get_raw(raw, path), 400)


@pytest.fixture(scope="module")
def sign_key(client: KMSClient) -> str:
    key_id = unique_key_id("query")
    create_key(client, key_id=key_id, purpose="sign", algorithm="Ed25519")
    return key_id


QUERIES = [
    ("/v1/kms/keys", "limit=1&limit=1000", "limit"),
    ("/v1/kms/keys", "limit=5&limit=5", "limit"),
    ("/v1/kms/keys", "after=a&limit=2&after=b", "after"),
    ("/v1/kms/keys/{key}/public-key", "version=1&version=1", "version"),
    ("/v1/kms/keys/{key}/versions", "limit=1&limit=1000", "limit"),
    ("/v1/kms/keys/{key}/versions", "after=0&after=1", "after"),
]


@pytest.mark.parametrize(("path", "query", "name"), QUERIES)
def test_a_query_parameter_given_twice_is_400(
    client: KMSClient, sign_key: str, path: str, query: str, name: str
) -> None:
    url = path.format(key=sign_key)
    single = query.split("&")[0]
    expect_json(client.get(f"{url}?{single}"), 200)  # the control: once is fine
    response = client.get(f"{url}?{query}")
    body = expect_json(response, 400)
    assert body == {"error": f"query parameter {name} is given more than once"}
