#!/usr/bin/env python3
"""In-process cost of one request through the whole Flask app (issue 12, part 2).

The app is built as production builds it (policy file, audit log, metrics, rate limit off) over a
fresh SQLite keystore in a temporary directory; requests go through Flask's test client with a
verified-certificate stand-in, so no TLS and no gunicorn: what is measured is kms's own request
path. For each scenario it prints the per-call microseconds, wall and CPU (min and median of
--repeats runs of --calls calls each); with --profile NAME it runs that scenario under cProfile
instead and prints the top functions.

    .venv/bin/python scripts/profile_request.py [--calls 2000] [--repeats 3] [--profile encrypt]
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask.testing import FlaskClient

from kms.app import create_app
from kms.master import init_database, open_master_keyring
from kms.settings import Settings

POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
"""


class _PeerCertificate:
    """What gunicorn's TLS socket answers for a verified client certificate."""

    def getpeercert(self) -> dict[str, Any]:
        return {"subject": ((("commonName", "orchestrator"),),), "subjectAltName": ()}


def build_client(directory: Path) -> FlaskClient:
    passphrase = directory / "master.key"
    passphrase.write_bytes(b"correct horse battery staple\n")
    os.chmod(passphrase, 0o400)
    policy = directory / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    settings = Settings(
        database_dsn=str(directory / "kms.db"),
        master_passphrase_file=passphrase,
        kdf_iterations=1_000,
        insecure_test_kdf_floor=1_000,
        policy_file=policy,
        audit_path=directory / "audit.log",
    )
    init_database(settings)
    app = create_app(settings, keyring=open_master_keyring(settings))
    client = app.test_client()
    client.environ_base["gunicorn.socket"] = _PeerCertificate()
    return client


def scenarios(client: FlaskClient) -> dict[str, Callable[[], Any]]:
    def created(purpose: str, algorithm: str | None = None) -> str:
        body: dict[str, Any] = {"purpose": purpose}
        if algorithm:
            body["algorithm"] = algorithm
        response = client.post("/v1/kms/keys", json=body)
        _expect(response.status_code, 201, response.get_data())
        return response.get_json()["key_id"]

    aes = created("encrypt")
    ecdsa = created("sign", "ECDSA-P256")
    ed25519 = created("sign", "Ed25519")
    hmac = created("mac")
    small = base64.b64encode(os.urandom(256)).decode()
    large = base64.b64encode(os.urandom(64 * 1024)).decode()
    ciphertext = client.post(
        "/v1/kms/encrypt", json={"key_id": aes, "plaintext": small}
    ).get_json()["ciphertext"]
    batch = {"key_id": aes, "batch": [{"plaintext": small}] * 100}

    def post(path: str, body: dict[str, Any]) -> Callable[[], Any]:
        def call() -> None:
            response = client.post(path, json=body)
            _expect(response.status_code, 200, response.get_data())

        return call

    def healthz() -> None:
        response = client.get("/healthz")
        _expect(response.status_code, 200, response.get_data())

    return {
        "healthz": healthz,
        "encrypt": post("/v1/kms/encrypt", {"key_id": aes, "plaintext": small}),
        "decrypt": post("/v1/kms/decrypt", {"key_id": aes, "ciphertext": ciphertext}),
        "sign-p256": post("/v1/kms/sign", {"key_id": ecdsa, "message": small}),
        "sign-ed25519": post("/v1/kms/sign", {"key_id": ed25519, "message": small}),
        "mac": post("/v1/kms/mac", {"key_id": hmac, "message": small}),
        "datakey": post("/v1/kms/datakey", {"key_id": aes}),
        "batch100": post("/v1/kms/encrypt", batch),
        "encrypt-64k": post("/v1/kms/encrypt", {"key_id": aes, "plaintext": large}),
    }


def _expect(status: int, expected: int, body: bytes) -> None:
    if status != expected:
        raise SystemExit(f"expected {expected}, got {status}: {body[:200]!r}")


def per_call_us(call: Callable[[], Any], calls: int) -> tuple[float, float]:
    """(wall, CPU) microseconds per call. On a busy machine the CPU time of this process is the
    steadier figure: the wall time also counts the time other processes held the cores."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    cpu = time.process_time() - cpu_started
    return (time.perf_counter() - started) / calls * 1e6, cpu / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", help="a scenario to run under cProfile")
    parser.add_argument("--only", help="comma-separated scenarios")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kms-profile-") as directory:
        client = build_client(Path(directory))
        table = scenarios(client)
        if arguments.profile:
            call = table[arguments.profile]
            for _ in range(50):
                call()
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(arguments.calls):
                call()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            return
        names = arguments.only.split(",") if arguments.only else list(table)
        for name in names:
            calls = (
                arguments.calls
                if name not in ("batch100", "encrypt-64k")
                else arguments.calls // 10
            )
            per_call_us(table[name], max(calls // 10, 10))  # warm up
            runs = [per_call_us(table[name], calls) for _ in range(arguments.repeats)]
            wall = [run[0] for run in runs]
            cpu = [run[1] for run in runs]
            print(
                f"{name:14} wall min {min(wall):9.1f} median {statistics.median(wall):9.1f}  "
                f"cpu min {min(cpu):9.1f} median {statistics.median(cpu):9.1f} max "
                f"{max(cpu):9.1f} us  ({calls} calls x {arguments.repeats})",
                flush=True,
            )


if __name__ == "__main__":
    main()
