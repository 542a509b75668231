#!/usr/bin/env python3
"""Per-request cost of the server itself over keep-alive mTLS (issue 12, the worker's share).

Starts a kms of its own (as scripts/bench_batch.py does: dev certificates, SQLite, ``kms serve``
with the production gunicorn settings), then drives it from --connections threads, each over one
kept-alive TLS connection with a client certificate (``http.client``, lighter than requests,
so more of the time measured is the server's). For each scenario it prints requests per second
and the median and p99 latency of --rounds rounds of --seconds each.

    .venv/bin/python scripts/bench_keepalive.py [--connections 4] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_batch import Target, own_server  # noqa: E402


def connection(target: Target) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(target.ca))
    context.load_cert_chain(str(target.cert), str(target.key))
    host, port = target.url.removeprefix("https://").split(":")
    return http.client.HTTPSConnection(host, int(port), context=context, timeout=30)


def call(conn: http.client.HTTPSConnection, method: str, path: str, body: bytes | None) -> bytes:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {data[:200]!r}")
    return data


def run(
    target: Target, connections: int, seconds: float, method: str, path: str, body: Any
) -> tuple[float, float, float]:
    latencies: list[list[float]] = [[] for _ in range(connections)]
    barrier = threading.Barrier(connections + 1)
    stop = [0.0]

    def drive(index: int) -> None:
        conn = connection(target)
        for _ in range(20):
            call(conn, method, path, body)
        barrier.wait()
        mine = latencies[index]
        while True:
            started = time.perf_counter()
            if started >= stop[0]:
                break
            call(conn, method, path, body)
            mine.append(time.perf_counter() - started)
        conn.close()

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    stop[0] = time.perf_counter() + 1e9
    barrier.wait()
    began = time.perf_counter()
    stop[0] = began + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = sorted(value for values in latencies for value in values)
    p99 = every[min(len(every) - 1, int(len(every) * 0.99))]
    return len(every) / elapsed, statistics.median(every) * 1000, p99 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="kms-bench-") as directory,
        own_server(Path(directory)) as target,
    ):
        conn = connection(target)
        call(conn, "POST", "/v1/kms/keys", json.dumps({"key_id": "bench"}).encode())
        small = base64.b64encode(os.urandom(256)).decode()
        large = base64.b64encode(os.urandom(64 * 1024)).decode()
        scenarios = {
            "healthz": ("GET", "/healthz", None),
            "encrypt-256": (
                "POST",
                "/v1/kms/encrypt",
                json.dumps({"key_id": "bench", "plaintext": small}).encode(),
            ),
            "encrypt-64k": (
                "POST",
                "/v1/kms/encrypt",
                json.dumps({"key_id": "bench", "plaintext": large}).encode(),
            ),
        }
        for name, (method, path, body) in scenarios.items():
            rounds = [
                run(target, arguments.connections, arguments.seconds, method, path, body)
                for _ in range(arguments.rounds)
            ]
            rates = [r[0] for r in rounds]
            print(
                f"{name:12} req/s median {statistics.median(rates):8.1f} "
                f"(min {min(rates):.1f} max {max(rates):.1f})  "
                f"p50 {statistics.median(r[1] for r in rounds):6.2f} ms  "
                f"p99 {statistics.median(r[2] for r in rounds):6.2f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
