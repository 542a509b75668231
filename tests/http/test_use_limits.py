"""Rotation by use over real gunicorn: two workers, eight client threads, one key with
``max_encryptions_per_version`` = 200. Versions are counted from the ciphertexts themselves:
every one is decrypted and the version the server read from it is tallied.

A worker reserves blocks of an eighth of the limit (``BLOCK_FRACTION`` in kms.service.keys.limits),
so a limit of 200 races through as many block reservations and rotations per version as 1,000 did
(3.5 versions' worth of encryptions: three rotations), at a fifth of the requests."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.helpers.harness import KMSClient, b64, expect_error, expect_json, prepare_deployment
from tests.helpers.identities import running_server
from tests.http.test_metrics import sample, samples

pytestmark = pytest.mark.slow

LIMIT = 200
ENCRYPTIONS = 700
THREADS = 8


def worker_pids(master: int) -> list[int]:
    """The gunicorn master's children, from /proc."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def encrypt_all(
    client: KMSClient, key_id: str, retry: bool, half_way: threading.Event | None = None
) -> tuple[list[str], list[str]]:
    """``ENCRYPTIONS`` encryptions from ``THREADS`` threads: (ciphertexts, failures)."""
    ciphertexts: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    per_thread = ENCRYPTIONS // THREADS
    extra = ENCRYPTIONS - per_thread * THREADS

    def run(count: int) -> None:
        session = client.new_session()
        try:
            for _ in range(count):
                while True:
                    try:
                        response = client.post(
                            "/v1/kms/encrypt",
                            session=session,
                            json={"key_id": key_id, "plaintext": b64(b"payload")},
                        )
                    except (
                        requests.ConnectionError,
                        requests.exceptions.ChunkedEncodingError,
                    ) as error:
                        if not retry:
                            with lock:
                                failures.append(repr(error))
                            break
                        session.close()
                        session = client.new_session()
                        continue
                    with lock:
                        if response.status_code == 200:
                            ciphertexts.append(response.json()["ciphertext"])
                            if half_way is not None and len(ciphertexts) == ENCRYPTIONS // 2:
                                half_way.set()
                        else:
                            failures.append(f"{response.status_code} {response.text}")
                    break
        finally:
            session.close()

    threads = [
        threading.Thread(target=run, args=(per_thread + (1 if i < extra else 0),))
        for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ciphertexts, failures


def versions_of(client: KMSClient, key_id: str, ciphertexts: list[str]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for ciphertext in ciphertexts:
        body = expect_json(
            client.post("/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": ciphertext}), 200
        )
        assert body["plaintext"] == b64(b"payload")
        counts[body["version"]] += 1
    return counts


def test_no_version_passes_its_limit_across_two_workers_even_when_one_is_killed(
    tmp_path: Path,
) -> None:
    deployment = prepare_deployment(tmp_path / "kms")
    with running_server(deployment) as server:
        client = KMSClient(deployment)
        try:
            created = expect_json(
                client.post(
                    "/v1/kms/keys",
                    json={"key_id": "busy", "max_encryptions_per_version": LIMIT},
                ),
                201,
            )
            assert created["max_encryptions_per_version"] == LIMIT

            ciphertexts, failures = encrypt_all(client, "busy", retry=False)
            assert failures == []
            assert len(ciphertexts) == ENCRYPTIONS
            counts = versions_of(client, "busy", ciphertexts)
            assert max(counts.values()) <= LIMIT
            latest = expect_json(client.get("/v1/kms/keys/busy"), 200)
            assert sorted(counts) == list(range(1, latest["version"] + 1))  # contiguous
            for version in latest["key_versions"]:
                assert version["encryptions"] <= LIMIT

            metrics = samples(client.get("/metrics").text)
            reserved = "kms_key_version_encryptions_reserved"
            assert sample(metrics, reserved, key_id="busy", version="1") > 0

            # Again on a second key, with a worker killed (SIGKILL) half-way: its reserved
            # blocks stay counted, so the workers that follow never reuse them.
            expect_json(
                client.post(
                    "/v1/kms/keys",
                    json={"key_id": "killed", "max_encryptions_per_version": LIMIT},
                ),
                201,
            )
            half_way = threading.Event()
            victim = worker_pids(server.process.pid)[0]

            def kill_half_way() -> None:
                half_way.wait()
                os.kill(victim, signal.SIGKILL)

            killer = threading.Thread(target=kill_half_way)
            killer.start()
            ciphertexts, failures = encrypt_all(client, "killed", retry=True, half_way=half_way)
            killer.join()
            assert failures == []
            assert victim not in worker_pids(server.process.pid)  # gunicorn replaced it
            counts = versions_of(client, "killed", ciphertexts)
            assert max(counts.values()) <= LIMIT
            assert sum(counts.values()) == len(ciphertexts) >= ENCRYPTIONS

            # PATCH: the rotation settings, and hostile input refused as JSON 400s.
            patched = expect_json(
                client.request("PATCH", "/v1/kms/keys/busy", json={"rotation_period": "12h"}), 200
            )
            assert patched["rotation_period"] == "12h"
            assert patched["max_encryptions_per_version"] == LIMIT  # left out: unchanged
            assert patched["next_rotation_at"] is not None
            for bad in (
                {"rotation_period": "59m"},
                {"rotation_period": 3600},
                {"max_encryptions_per_version": 2**32 + 1},
                {"max_encryptions_per_version": "1000"},
                {"max_encryptions_per_version": True},
                {"rotation_period": "1h", "typo": 1},
                [],
            ):
                expect_error(client.request("PATCH", "/v1/kms/keys/busy", json=bad), 400)
            expect_error(
                client.request("PATCH", "/v1/kms/keys/missing", json={"rotation_period": "1d"}),
                404,
            )
            cleared = expect_json(
                client.request(
                    "PATCH",
                    "/v1/kms/keys/busy",
                    json={"rotation_period": None, "max_encryptions_per_version": None},
                ),
                200,
            )
            assert cleared["rotation_period"] is None
            assert cleared["max_encryptions_per_version"] == 2**30  # the configured default
        finally:
            client.close()
