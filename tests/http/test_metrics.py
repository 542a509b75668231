"""/metrics over real gunicorn: counts added up across two workers, from a fresh directory;
labels from closed sets whatever clients send; per-key series only within the caller's scope."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from tests.helpers.harness import (
    Deployment,
    KMSClient,
    b64,
    create_key,
    expect_error,
    expect_json,
    prepare_deployment,
)
from tests.helpers.identities import identity_client, running_server
from tests.helpers.raw import read_response_from, tls_connection

pytestmark = pytest.mark.slow

N = 60
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        name, labels, value = match.groups()
        pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        found[(name, pairs)] = float(value)
    return found


def sample(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_the_master_key_backend_and_when_it_opened_are_shown(tmp_path: Path) -> None:
    """/readyz and /metrics say which backend opened the root secret, and /metrics when: once,
    in gunicorn's master, before the workers (the pkcs11 backend: test_hsm_serving.py)."""
    deployment = prepare_deployment(tmp_path / "kms")
    started_at = time.time()
    with running_server(deployment):
        client = KMSClient(deployment)
        try:
            ready = expect_json(client.get("/readyz"), 200)
            scraped = [client.get("/metrics") for _ in range(4)]  # both workers, likely
        finally:
            client.close()
    assert ready == {"status": "ready", "master_key_backend": "passphrase"}
    opened = {
        sample(
            samples(response.text), "kms_master_key_opened_timestamp_seconds", backend="passphrase"
        )
        for response in scraped
    }
    assert len(opened) == 1, opened  # every worker reports the master's one opening
    (at,) = opened
    assert started_at <= at <= time.time()


def test_metrics_count_every_request_across_two_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator's multiprocess directory holds a file from an earlier run that claims 1000
    # health checks: the server must start from a clean directory and not count them.
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = MmapedDict(str(metrics_dir / "counter_4242.db"))
    key = mmap_key(
        "kms_http_requests",
        "kms_http_requests_total",
        ["endpoint", "method", "status"],
        ["health.healthz", "GET", "200"],
        "HTTP requests answered",
    )
    stale.write_value(key, 1000.0, 0)
    stale.close()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    deployment = prepare_deployment(tmp_path / "kms")

    with running_server(deployment) as server:
        client = KMSClient(deployment)
        try:
            errors: list[str] = []

            def work() -> None:
                for _ in range(N // 6):
                    with client.new_session() as session:  # new connections spread the workers
                        response = client.get("/healthz", session=session)
                        if response.status_code != 200:
                            errors.append(response.text)

            threads = [threading.Thread(target=work) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []

            create_key(client, key_id="metered")
            for _ in range(3):
                body = {"key_id": "metered", "plaintext": b64(b"counted")}
                expect_json(client.post("/v1/kms/encrypt", json=body), 200)

            response = client.get("/metrics")
            assert response.status_code == 200, response.text
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            found = samples(response.text)
        finally:
            client.close()
        worker_pids = {
            int(path.stem.rsplit("_", 1)[1]) for path in metrics_dir.glob("counter_*.db")
        } - {server.process.pid}

    assert not (metrics_dir / "counter_4242.db").exists()
    assert len(worker_pids) >= 2, worker_pids  # both workers answered some of the requests
    healthz = {"endpoint": "health.healthz", "method": "GET"}
    assert sample(found, "kms_http_requests_total", **healthz, status="200") == N
    assert sample(found, "kms_http_request_duration_seconds_count", endpoint="health.healthz") == N
    assert (
        sample(
            found, "kms_http_requests_total", endpoint="crypto.encrypt", method="POST", status="200"
        )
        == 3
    )
    assert (
        sample(found, "kms_crypto_operations_total", operation="encrypt", algorithm="AES-256-GCM")
        == 3
    )
    assert sample(found, "kms_keys", state="enabled") == 1
    hits = sample(found, "kms_key_cache_hits_total")
    misses = sample(found, "kms_key_cache_misses_total")
    assert misses >= 1 and hits + misses >= 3, (hits, misses)


def test_the_node_directory_is_made_at_start_and_removed_at_exit(tmp_path: Path) -> None:
    # No PROMETHEUS_MULTIPROC_DIR: kms makes its own directory (metrics, rate-limit table).
    runtime_root = tmp_path / "tmp"
    runtime_root.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        patch.setenv("TMPDIR", str(runtime_root))
        deployment = prepare_deployment(tmp_path / "kms")
        with running_server(deployment):
            made = list(runtime_root.glob("kms-node-*"))
            assert len(made) == 1, made
            assert (made[0] / "rate-limit.table").is_file()
            assert any((made[0] / "metrics").glob("counter_*.db"))
    assert list(runtime_root.iterdir()) == []


# -- hostile label values, and who sees which keys ---------------------------------------------

POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
  prometheus:
    - operations: ["metrics"]
      keys: ["*"]
  billing-scraper:
    - operations: ["metrics"]
      keys: ["billing-*"]
  stranger:
    - operations: ["encrypt"]
      keys: ["nothing-*"]
"""
#: The methods kms names in its labels; any other counts as ``other``.
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "LIST", "other"}
ODD_METHODS = 10_000
CONNECTIONS = 8
MAX_KEY_SERIES = 4


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("kms-metrics-scope")
    (directory / "policy.yaml").write_text(POLICY, encoding="utf-8")
    deployment = prepare_deployment(
        directory,
        authorization={"policy_file": str(directory / "policy.yaml")},
        metrics={"max_key_series": MAX_KEY_SERIES},
    )
    with running_server(deployment):
        yield deployment


def scrape(deployment: Deployment, name: str) -> str:
    client = identity_client(deployment, name, name)
    try:
        response = client.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text
    finally:
        client.close()


def send_methods(deployment: Deployment, methods: list[str]) -> list[int]:
    """Each method once, as ``METHOD /healthz``, on one keep-alive connection; the statuses."""
    statuses = []
    with tls_connection(deployment) as tls, tls.makefile("rb") as stream:
        for method in methods:
            tls.sendall(f"{method} /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            statuses.append(read_response_from(stream).status)
    return statuses


def test_ten_thousand_odd_methods_add_no_series(scoped: Deployment) -> None:
    # One odd method and one scrape first, so that their series exist before the flood.
    assert send_methods(scoped, ["ODD00000"]) == [405]
    scrape(scoped, "prometheus")
    before = scrape(scoped, "prometheus")
    statuses: list[int] = []
    shares = [
        [f"ODD{index:05d}" for index in range(1 + worker, ODD_METHODS + 1, CONNECTIONS)]
        for worker in range(CONNECTIONS)
    ]
    threads = [
        threading.Thread(target=lambda share=share: statuses.extend(send_methods(scoped, share)))
        for share in shares
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [405] * ODD_METHODS
    after = scrape(scoped, "prometheus")

    found_before, found_after = samples(before), samples(after)
    # Not one series more: the same names and labels, only the counts moved.
    assert found_after.keys() == found_before.keys()
    assert len(after) < len(before) + 200
    requests_total = [labels for name, labels in found_after if name == "kms_http_requests_total"]
    assert {dict(labels)["method"] for labels in requests_total} <= METHODS
    odd = {"endpoint": "none", "method": "other", "status": "405"}
    assert sample(found_after, "kms_http_requests_total", **odd) == ODD_METHODS + 1


def test_the_standard_methods_keep_their_names(scoped: Deployment) -> None:
    assert send_methods(scoped, ["PUT", "PATCH", "LIST", "OPTIONS"]) == [405, 405, 405, 200]
    found = samples(scrape(scoped, "prometheus"))
    for method in ("PUT", "PATCH", "LIST"):
        labels = {"endpoint": "none", "method": method, "status": "405"}
        assert sample(found, "kms_http_requests_total", **labels) >= 1, method


def key_series(text: str) -> set[str]:
    found = samples(text)
    return {
        dict(labels)["key_id"]
        for name, labels in found
        if name in ("kms_key_version_encryptions", "kms_key_version_decryptions")
    }


def test_a_scoped_caller_sees_only_its_keys_and_the_series_are_capped(scoped: Deployment) -> None:
    admin = KMSClient(scoped)
    try:
        key_ids = [f"{team}-{n}" for team in ("billing", "payroll") for n in range(3)]
        for key_id in key_ids:
            create_key(admin, key_id=key_id)
            body = {"key_id": key_id, "plaintext": b64(b"used once")}
            expect_json(admin.post("/v1/kms/encrypt", json=body), 200)
    finally:
        admin.close()

    scoped_text = scrape(scoped, "billing-scraper")
    assert key_series(scoped_text) == {"billing-0", "billing-1", "billing-2"}
    assert "payroll" not in scoped_text
    assert sample(samples(scoped_text), "kms_key_version_series_truncated") == 0
    # Node-wide totals name no key: every caller allowed metrics sees them.
    assert sample(samples(scoped_text), "kms_keys", state="enabled") == len(key_ids)

    everything = scrape(scoped, "prometheus")
    # At most MAX_KEY_SERIES key versions, the first in key order, and a flag that says so.
    assert key_series(everything) == {"billing-0", "billing-1", "billing-2", "payroll-0"}
    assert sample(samples(everything), "kms_key_version_series_truncated") == 1

    stranger = identity_client(scoped, "stranger", "stranger")
    try:
        expect_error(stranger.get("/metrics"), 403)
    finally:
        stranger.close()


def test_one_encryption_shows_as_one_and_the_reserved_block_apart(tmp_path: Path) -> None:
    """A worker reserves encryptions a block at a time (kms.encryption_block, 1,000): the block
    is what counts against the version's limit, the use is one encryption. One worker, which
    adds its counts to the database before it answers the scrape."""
    deployment = prepare_deployment(tmp_path / "kms", server={"workers": 1})
    with running_server(deployment):
        client = KMSClient(deployment)
        try:
            create_key(client, key_id="counted")
            body = {"key_id": "counted", "plaintext": b64(b"once")}
            expect_json(client.post("/v1/kms/encrypt", json=body), 200)
            scraped = client.get("/metrics")
            assert scraped.status_code == 200, scraped.text
            found = samples(scraped.text)
        finally:
            client.close()
    version = {"key_id": "counted", "version": "1"}
    assert sample(found, "kms_key_version_encryptions", **version) == 1
    assert sample(found, "kms_key_version_encryptions_reserved", **version) == 1000
    assert sample(found, "kms_key_version_decryptions", **version) == 0
