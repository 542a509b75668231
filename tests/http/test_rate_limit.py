"""Per-identity rate limits over real gunicorn: one limit for the node, whatever the workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.harness import (
    Deployment,
    ServerProcess,
    expect_error,
    prepare_deployment,
    wait_until,
)
from tests.helpers.identities import (
    audit_records,
    identity_client,
    running_server,
)

pytestmark = pytest.mark.slow

RATE = 5.0  # requests per second per identity
BURST = 10
PATH = "/v1/kms/keys?limit=1"
#: Requests the hammering test sends in all, from 8 threads: many times what the limit lets
#: through while they run, however fast or slow the machine.
HAMMER_REQUESTS = 20 * BURST


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kms-rate-metrics")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return prepare_deployment(
        tmp_path_factory.mktemp("kms-rate"),
        rate_limit={"rate": RATE, "burst": BURST},
        audit={"summary_seconds": 1},
    )


@pytest.fixture(scope="module")
def server(deployment: Deployment, metrics_dir: Path) -> Iterator[ServerProcess]:
    # The metrics directory is ours so that the test can see which workers answered.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
        with running_server(deployment) as server:
            yield server


def test_a_burst_over_the_limit_gets_429_with_retry_after(server: ServerProcess) -> None:
    client = identity_client(server.deployment, "bursty", "bursty")
    try:
        statuses = []
        for _ in range(3 * BURST):
            response = client.get(PATH)
            statuses.append(response.status_code)
            if response.status_code == 429:
                expect_error(response, 429, "rate limit exceeded")
                assert int(response.headers["Retry-After"]) >= 1
    finally:
        client.close()
    assert set(statuses) == {200, 429}
    assert statuses[:BURST] == [200] * BURST
    # Served requests have their lines; throttled ones did nothing and are counted in summary
    # lines (one per identity and worker every audit.summary_seconds), every one of them.
    answers = [
        record["status"]
        for record in audit_records(server.deployment)
        if record["identity"] == "cn:bursty" and record["type"] == "response"
    ]
    assert answers == [status for status in statuses if status == 200]

    def throttled_in_summaries() -> int:
        return sum(
            record["statuses"].get("429", 0)
            for record in audit_records(server.deployment)
            if record["identity"] == "cn:bursty" and record["type"] == "summary"
        )

    wait_until(lambda: throttled_in_summaries() == statuses.count(429), "summaries of every 429")


def test_a_caller_under_the_limit_never_gets_429(server: ServerProcess) -> None:
    client = identity_client(server.deployment, "calm", "calm")
    try:
        for _ in range(BURST):  # the whole burst at once ...
            assert client.get(PATH).status_code == 200
        for _ in range(BURST):  # ... then half the rate (pacing, not an assertion about time)
            time.sleep(2 / RATE)
            assert client.get(PATH).status_code == 200
        # The health checks are never limited.
        for _ in range(3 * BURST):
            assert client.get("/healthz").status_code == 200
    finally:
        client.close()


def test_two_workers_together_let_through_no_more_than_the_limit(
    server: ServerProcess, metrics_dir: Path
) -> None:
    client = identity_client(server.deployment, "hammer", "hammer")
    statuses: list[int] = []
    lock = threading.Lock()
    enough = threading.Event()

    def hammer() -> None:
        while not enough.is_set():
            with client.new_session() as session:  # new connections land on both workers
                status = client.get(PATH, session=session).status_code
            with lock:
                statuses.append(status)
                if len(statuses) >= HAMMER_REQUESTS:
                    enough.set()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # each request has its timeout
    # The window the limit applied to: its refill is what may pass beyond the burst.
    elapsed = time.monotonic() - started
    client.close()

    allowed = statuses.count(200)
    assert set(statuses) == {200, 429}
    assert allowed >= BURST
    assert allowed <= 1.1 * (BURST + RATE * elapsed), (allowed, elapsed, len(statuses))
    workers = {path.stem for path in metrics_dir.glob("counter_*.db")} - {
        f"counter_{server.process.pid}"
    }
    assert len(workers) >= 2, workers
