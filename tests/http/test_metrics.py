"""/metrics over real gunicorn: counts added up across two workers, from a fresh directory."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from tests.helpers.harness import KMSClient, b64, create_key, expect_json, prepare_deployment
from tests.helpers.identities import running_server

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
