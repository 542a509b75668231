"""Listing keys on a database of 200,000 keys over real gunicorn mTLS: the attack of a caller
allowed ``keys:read`` on ``billing-*`` only, and a label filter with no match.

The keys are made by the bench seeder (correctly sealed rows, written in SQL in seconds), all
sorted before ``billing-``: a listing that read every key and filtered the scope afterwards
read 200,000 rows per request. What is asserted is the rows each request examines (the metric
``kms_key_list_rows_examined_total``, counted from the rows the queries return) and that a
legitimate client is served while eight such listings run, never a duration.
"""

from __future__ import annotations

import re
import shutil
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.seed import Seeded, cold_key_id, copy_to_postgres, seeded_sqlite
from tests.helpers.config import write_config
from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    expect_json,
    prepare_deployment,
)
from tests.helpers.identities import IdentityClient, identity_client
from tests.helpers.postgres import given_postgres_dsn, new_database

pytestmark = pytest.mark.slow

KEYS = 200_000
POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
  billing-reader:
    - operations: ["keys:read"]
      keys: ["billing-*"]
  app:
    - operations: ["encrypt"]
      keys: ["orders-key"]
"""
BILLING_KEYS = ("billing-a", "billing-b")
NEXT_AFTER = "KMS-Next-After"
LISTINGS = 8
#: The rows a listing reads at most per request, as docs/security.md promises.
MAX_ROWS_EXAMINED = 1000
#: gunicorn's graceful_timeout (kms.gunicorn_conf), and a margin for a busy machine.
GRACEFUL_SECONDS = 30


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seeded_sqlite(tmp_path_factory.mktemp("seed"), KEYS, 0, processes=2)


def seeded_deployment(directory: Path, seeded: Seeded, certificates: Path) -> Deployment:
    """A deployment on a copy of the seeded SQLite database, with the policy above."""
    (directory / "policy.yaml").write_text(POLICY, encoding="utf-8")
    deployment = prepare_deployment(
        directory, certificates, authorization=policy(directory), kms=KMS
    )
    shutil.copyfile(seeded.passphrase_file, deployment.passphrase_file)
    deployment.passphrase_file.chmod(0o600)
    deployment.database.unlink()
    shutil.copyfile(seeded.database, deployment.database)
    return deployment


def policy(directory: Path) -> dict[str, str]:
    return {"policy_file": str(directory / "policy.yaml")}


#: The deadline at its highest: on a machine shared by many test processes reading 1,000 rows can
#: take seconds, and what these tests assert is the rows read, not the time.
KMS = {"list_deadline_ms": 20_000}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def deployment(
    request: pytest.FixtureRequest,
    seeded: Seeded,
    tmp_path_factory: pytest.TempPathFactory,
    certificates: Path,
) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp(f"kms-list-{request.param}")
    if request.param == "sqlite":
        yield seeded_deployment(directory, seeded, certificates)
        return
    with new_database(given_postgres_dsn(request.config)) as url:
        deployment = seeded_deployment(directory, seeded, certificates)
        copy_to_postgres(seeded, url)
        write_config(
            deployment.config,
            directory=directory,
            port=deployment.port,
            dsn=url,
            authorization=policy(directory),
            kms=KMS,
        )
        yield deployment


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    server = ServerProcess(deployment)
    probe = KMSClient(deployment)
    try:
        server.wait_until_serving(probe)
    finally:
        probe.close()
    yield server
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[KMSClient]:
    client = KMSClient(server.deployment)  # CN orchestrator
    for key_id in (*BILLING_KEYS, "orders-key"):
        expect_json(client.post("/v1/kms/keys", json={"key_id": key_id}), 201)
    yield client
    client.close()


@pytest.fixture(scope="module")
def reader(admin: KMSClient) -> Iterator[IdentityClient]:
    client = identity_client(admin.deployment, "billing-reader", "billing-reader")
    yield client
    client.close()


@pytest.fixture(scope="module")
def app(admin: KMSClient) -> Iterator[IdentityClient]:
    client = identity_client(admin.deployment, "app", "app")
    yield client
    client.close()


def rows_examined(admin: KMSClient) -> float:
    text = admin.get("/metrics").text
    match = re.search(r"^kms_key_list_rows_examined_total (\S+)$", text, re.MULTILINE)
    return 0.0 if match is None else float(match.group(1))


def list_one(client: KMSClient, **params: str) -> tuple[list[str], str | None]:
    response = client.get("/v1/kms/keys", params={"limit": "1", **params}, timeout=60)
    keys = [key["key_id"] for key in expect_json(response, 200)]
    return keys, response.headers.get(NEXT_AFTER)


def test_a_narrow_caller_lists_its_keys_while_an_encrypt_is_served(
    admin: KMSClient, reader: IdentityClient, app: IdentityClient
) -> None:
    before = rows_examined(admin)
    start = threading.Barrier(LISTINGS + 1)

    def listing() -> tuple[list[str], str | None]:
        start.wait()
        return list_one(reader)

    with ThreadPoolExecutor(LISTINGS) as pool:
        listings = [pool.submit(listing) for _ in range(LISTINGS)]
        start.wait()  # the eight are sent now; the encrypt goes beside them
        encrypted = app.post(
            "/v1/kms/encrypt", json={"key_id": "orders-key", "plaintext": b64(b"hello")}, timeout=30
        )
        pages = [future.result() for future in listings]
    assert expect_json(encrypted, 200)["key_id"] == "orders-key"
    assert pages == [(["billing-a"], "billing-a")] * LISTINGS
    # One row each: the 200,000 keys outside the scope were never read.
    assert rows_examined(admin) - before == LISTINGS

    # Following the cursor reaches the caller's other key, then the end.
    assert list_one(reader, after="billing-a") == (["billing-b"], "billing-b")
    assert list_one(reader, after="billing-b") == ([], None)


def test_a_label_filter_with_no_match_reads_a_bounded_page(admin: KMSClient) -> None:
    before = rows_examined(admin)
    keys, cursor = list_one(admin, label="team:nobody")
    assert keys == []
    assert cursor == cold_key_id(MAX_ROWS_EXAMINED - 1)
    assert rows_examined(admin) - before == MAX_ROWS_EXAMINED
    keys, cursor = list_one(admin, label="team:nobody", after=cursor)
    assert (keys, cursor) == ([], cold_key_id(2 * MAX_ROWS_EXAMINED - 1))


def test_sigterm_stops_the_server_during_listings(
    seeded: Seeded, tmp_path: Path, certificates: Path
) -> None:
    deployment = seeded_deployment(tmp_path, seeded, certificates)
    server = ServerProcess(deployment)
    admin = KMSClient(deployment)
    reader = identity_client(deployment, "billing-reader", "billing-reader")
    stop = threading.Event()
    answered = threading.Event()

    def keep_listing() -> None:
        while not stop.is_set():
            try:
                list_one(admin, label="team:nobody")
                list_one(reader)
            except Exception:  # the server is going away: any failure ends it
                return
            answered.set()

    threads = [threading.Thread(target=keep_listing) for _ in range(LISTINGS)]
    try:
        server.wait_until_serving(admin)
        for thread in threads:
            thread.start()
        assert answered.wait(60), "no listing was answered"
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=GRACEFUL_SECONDS + PROCESS_TIMEOUT_SECONDS / 4)
    finally:
        stop.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join()
        server.stop()
        admin.close()
        reader.close()
    assert returncode == 0, server.output()
    assert "Traceback" not in server.output()
