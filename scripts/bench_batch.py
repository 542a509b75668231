#!/usr/bin/env python3
"""Batch vs single-call encrypt throughput over the same keep-alive mTLS connections (issue 9).

Without --url it starts a kms of its own in a temporary directory (dev certificates, a fresh
SQLite database, ``kms serve`` with the default 2 workers x 4 threads) and stops it afterwards;
with --url it measures a running server (``make run``: --url https://localhost:8080 --secrets
./secrets).

Each of --connections threads opens one requests.Session (one TLS connection, kept alive) and
warms it up; then, on the same connections, single-call encrypts of --size bytes and batches of
--batch such encrypts take turns, --seconds in all for each, in --rounds alternating rounds.
Printed: items per second of each and their ratio.

    .venv/bin/python scripts/bench_batch.py [--connections 4] [--seconds 5] [--batch 100]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Target:
    url: str
    ca: Path
    cert: Path
    key: Path


def session(target: Target) -> requests.Session:
    client = requests.Session()
    client.trust_env = False
    client.verify = str(target.ca)
    client.cert = (str(target.cert), str(target.key))
    return client


def kms_script() -> str:
    script = Path(sys.executable).with_name("kms")
    found = str(script) if script.is_file() else shutil.which("kms")
    if found is None:
        sys.exit("bench: no kms command next to this python or on PATH (make install)")
    return found


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def own_server(directory: Path) -> Iterator[Target]:
    kms = kms_script()
    # Our own kms command with arguments of our own: no untrusted input reaches these calls.
    subprocess.run([kms, "dev-certs", str(directory)], check=True, capture_output=True)  # noqa: S603
    port = free_port()
    config = directory / "config.yaml"
    config.write_text(
        "server:\n"
        f"  port: {port}\n"
        f'  server_cert: "{directory / "server.crt"}"\n'
        f'  server_key: "{directory / "server.key"}"\n'
        f'  ca_cert: "{directory / "ca.pem"}"\n'
        "kms:\n"
        f'  master_passphrase_file: "{directory / "master.key"}"\n'
        "database:\n"
        f'  dsn: "{directory / "kms.db"}"\n'
        "audit:\n"
        f'  path: "{directory / "audit.log"}"\n',
        encoding="utf-8",
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
    environ["KMS_CONFIG"] = str(config)
    subprocess.run(  # noqa: S603
        [kms, "init"], check=True, capture_output=True, env=environ, cwd=directory
    )
    with (directory / "server.log").open("wb") as log:
        server = subprocess.Popen(  # noqa: S603
            [kms, "serve"], env=environ, cwd=directory, stdout=log, stderr=subprocess.STDOUT
        )
    target = Target(
        url=f"https://127.0.0.1:{port}",
        ca=directory / "ca.pem",
        cert=directory / "client.crt",
        key=directory / "client.key",
    )
    try:
        wait_until_serving(target, server)
        yield target
    finally:
        server.terminate()
        server.wait(timeout=TIMEOUT_SECONDS)


def wait_until_serving(target: Target, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    with session(target) as probe:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                sys.exit(f"bench: kms serve exited with {server.returncode}")
            try:
                probe.get(target.url + "/healthz", timeout=2)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
    sys.exit("bench: kms serve did not answer within 30 s")


def run_phase(
    target: Target,
    sessions: list[requests.Session],
    seconds: float,
    body: dict[str, object],
    items_per_request: int,
) -> tuple[int, float]:
    """Every session sends ``body`` again and again for ``seconds``; (items done, elapsed)."""
    counts = [0] * len(sessions)
    failures: list[str] = []  # an exception in a thread would end only that thread
    start = threading.Barrier(len(sessions) + 1)
    stop_at = [0.0]

    def work(index: int) -> None:
        client = sessions[index]
        start.wait()
        while time.perf_counter() < stop_at[0]:
            response = client.post(target.url + "/v1/kms/encrypt", json=body, timeout=60)
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text}")
                return
            if items_per_request > 1:
                results = response.json()["results"]
                if len(results) != items_per_request or "error" in results[0]:
                    failures.append(f"unexpected batch answer {results[:1]}")
                    return
            counts[index] += items_per_request

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    if failures:
        sys.exit(f"bench: {failures[0]}")
    return sum(counts), time.perf_counter() - began


def measure(
    target: Target, connections: int, seconds: float, batch: int, size: int, rounds: int
) -> None:
    key_id = f"bench-{uuid.uuid4().hex[:12]}"
    sessions = [session(target) for _ in range(connections)]
    try:
        created = sessions[0].post(target.url + "/v1/kms/keys", json={"key_id": key_id})
        if created.status_code != 201:
            sys.exit(f"bench: cannot create a key: {created.status_code} {created.text}")
        plaintext = base64.b64encode(os.urandom(size)).decode("ascii")
        single = {"key_id": key_id, "plaintext": plaintext}
        batched = {"key_id": key_id, "batch": [{"plaintext": plaintext}] * batch}
        # Warm up: the TLS handshakes, the workers' key caches.
        run_phase(target, sessions, min(seconds, 1.0), single, 1)
        # The phases alternate in rounds, so that a change in the machine's load (it is shared)
        # weighs on both alike rather than on whichever phase it happened to fall in.
        single_items = batch_items = 0
        single_elapsed = batch_elapsed = 0.0
        for _ in range(rounds):
            items, elapsed = run_phase(target, sessions, seconds / rounds, single, 1)
            single_items, single_elapsed = single_items + items, single_elapsed + elapsed
            items, elapsed = run_phase(target, sessions, seconds / rounds, batched, batch)
            batch_items, batch_elapsed = batch_items + items, batch_elapsed + elapsed
    finally:
        for client in sessions:
            client.close()
    single_rate = single_items / single_elapsed
    batch_rate = batch_items / batch_elapsed
    print(
        f"connections: {connections} keep-alive mTLS, {size} B plaintexts, {seconds:g} s each "
        f"in {rounds} alternating rounds"
    )
    print(
        f"single-call encrypt: {single_items} items in {single_elapsed:.2f} s = "
        f"{single_rate:,.0f} items/s"
    )
    print(
        f"batch of {batch} encrypt: {batch_items} items in {batch_elapsed:.2f} s = "
        f"{batch_rate:,.0f} items/s"
    )
    print(f"ratio: {batch_rate / single_rate:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running kms (default: start one of our own)")
    parser.add_argument("--secrets", type=Path, help="ca.pem, client.crt, client.key for --url")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two phases")
    args = parser.parse_args()
    if args.url:
        secrets = args.secrets or Path("secrets")
        target = Target(
            args.url, secrets / "ca.pem", secrets / "client.crt", secrets / "client.key"
        )
        measure(target, args.connections, args.seconds, args.batch, args.size, args.rounds)
        return
    with (
        tempfile.TemporaryDirectory(prefix="kms-bench-") as directory,
        own_server(Path(directory)) as target,
    ):
        measure(target, args.connections, args.seconds, args.batch, args.size, args.rounds)


if __name__ == "__main__":
    main()
