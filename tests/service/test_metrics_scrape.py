"""/metrics through the app's test client (docs/operations.md, Health and metrics): each key
version's use, the `metrics.max_key_series` cap at its smallest, and a batch's refused items.
The same over real gunicorn, with several workers and a scoped caller, is
tests/http/test_metrics.py."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from kms.app import create_app
from kms.service.keyring import RootKeyring
from kms.settings import Settings
from tests.helpers.tls import client_as

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def app_with(initialised: Settings, keyring: RootKeyring) -> Callable[..., Flask]:
    def build(**overrides: object) -> Flask:
        return create_app(initialised.with_overrides(**overrides), keyring=keyring)

    return build


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def version_series(found: Samples, name: str) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["key_id"], dict(labels)["version"]): value
        for (sample, labels), value in found.items()
        if sample == name
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encrypt(client: FlaskClient, key_id: str, plaintext: bytes) -> str:
    response = client.post("/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(plaintext)})
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["ciphertext"])


def test_each_version_s_encryptions_and_decryptions_are_shown(
    app_with: Callable[..., Flask],
) -> None:
    client = client_as(app_with())
    assert client.post("/v1/kms/keys", json={"key_id": "k"}).status_code == 201
    ciphertext = encrypt(client, "k", b"one")
    encrypt(client, "k", b"two")
    decrypted = client.post("/v1/kms/decrypt", json={"key_id": "k", "ciphertext": ciphertext})
    assert decrypted.status_code == 200
    found = scrape(client)
    assert version_series(found, "kms_key_version_encryptions") == {("k", "1"): 2}
    assert version_series(found, "kms_key_version_decryptions") == {("k", "1"): 1}
    assert found[("kms_key_version_series_truncated", ())] == 0


def test_max_key_series_1_shows_the_first_version_and_says_the_rest_are_left_out(
    app_with: Callable[..., Flask],
) -> None:
    client = client_as(app_with(metrics_max_key_series=1))
    for key_id in ("a", "b"):
        assert client.post("/v1/kms/keys", json={"key_id": key_id}).status_code == 201
        encrypt(client, key_id, b"used")
    found = scrape(client)
    assert version_series(found, "kms_key_version_encryptions") == {("a", "1"): 1}
    assert found[("kms_key_version_series_truncated", ())] == 1


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("kms_decryptions_refused_total", {"reason": reason}) or 0.0


def test_a_batch_s_items_that_do_not_authenticate_are_counted_as_refused(
    app_with: Callable[..., Flask],
) -> None:
    """kms_decryptions_refused_total{reason="invalid"} counts each refused item of a batch, as
    it counts a refused single call; the items that decrypt are not counted."""
    client = client_as(app_with())
    assert client.post("/v1/kms/keys", json={"key_id": "k"}).status_code == 201
    good = encrypt(client, "k", b"good")
    raw = bytearray(base64.b64decode(encrypt(client, "k", b"bad")))
    raw[-1] ^= 1  # a bit of the tag
    tampered = base64.b64encode(bytes(raw)).decode("ascii")
    before = refused("invalid")
    batch = [{"ciphertext": good}, {"ciphertext": tampered}, {"ciphertext": tampered}]
    response = client.post("/v1/kms/decrypt", json={"key_id": "k", "batch": batch})
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert results[0]["plaintext"] == b64(b"good")
    assert results[1:] == [{"error": "invalid ciphertext"}] * 2
    assert refused("invalid") - before == 2


def test_a_single_decrypt_s_refusal_is_counted_under_its_reason(
    app_with: Callable[..., Flask],
) -> None:
    """A single call refused `invalid ciphertext` (the error map's path, not a batch item's) is
    counted as `fenced` when it authenticated under a version below `min_decryption_version`,
    else as `invalid` (docs/operations.md, kms_decryptions_refused_total)."""
    client = client_as(app_with())
    assert client.post("/v1/kms/keys", json={"key_id": "k"}).status_code == 201
    made_by_v1 = encrypt(client, "k", b"before the fence")
    assert client.post("/v1/kms/keys/k/rotate").status_code == 200
    fence = client.patch("/v1/kms/keys/k", json={"min_decryption_version": 2})
    assert fence.status_code == 200, fence.get_json()
    raw = bytearray(base64.b64decode(encrypt(client, "k", b"after")))
    raw[-1] ^= 1  # a bit of the tag
    tampered = base64.b64encode(bytes(raw)).decode("ascii")
    for ciphertext, reason in ((made_by_v1, "fenced"), (tampered, "invalid")):
        before = refused("fenced"), refused("invalid")
        response = client.post("/v1/kms/decrypt", json={"key_id": "k", "ciphertext": ciphertext})
        assert (response.status_code, response.get_json()) == (
            400,
            {"error": "invalid ciphertext"},
        )
        counted = refused("fenced") - before[0], refused("invalid") - before[1]
        assert counted == ((1, 0) if reason == "fenced" else (0, 1)), reason


def test_each_kind_of_integrity_failure_is_shown_before_the_first(
    app_with: Callable[..., Flask],
) -> None:
    """`kms_integrity_failures_total{kind}` exists from the start, so that an alert on its
    increase sees the first failure (a series that appears at 1 shows no increase)."""
    found = scrape(client_as(app_with()))
    kinds = {
        dict(labels)["kind"]
        for (sample, labels), _ in found.items()
        if sample == "kms_integrity_failures_total"
    }
    assert kinds == {"mac", "rollback"}


def test_requests_are_counted_under_their_endpoint_and_warm_keys_as_cache_hits(
    app_with: Callable[..., Flask],
) -> None:
    """docs/operations.md: `kms_http_requests_total{endpoint, method, status}` names the route
    a request took, and `kms_key_cache_hits_total` counts the material found in memory (the
    second encryption under a key finds it)."""
    app = app_with()
    client = client_as(app)
    assert client.post("/v1/kms/keys", json={"key_id": "warm"}).status_code == 201
    endpoint = app.url_map.bind("localhost").match("/v1/kms/encrypt", method="POST")[0]
    labels = (("endpoint", endpoint), ("method", "POST"), ("status", "200"))
    before = scrape(client)
    encrypt(client, "warm", b"one")
    encrypt(client, "warm", b"two")
    after = scrape(client)

    def grown(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert grown("kms_http_requests_total", labels) == 2
    assert grown("kms_key_cache_hits_total") >= 1
