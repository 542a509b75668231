"""`make bench` keeps working: a tiny run (short scenarios, few keys, SQLite) of the real thing.

Not a performance test: nothing here depends on how fast anything was, only that every scenario
ran against a real server and reported a figure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.load import BenchError, Client, parse_response
from bench.report import TARGETS
from tests.helpers.softhsm import softhsm_module

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("passphrase", "pkcs11")
#: Keys seeded, and versions of the memory scenario's key: two batches of its 250 decrypts.
KEYS = 500
# The first test starts real servers; the other two are quick.
SCENARIOS = {
    "baseline_healthz",
    "encrypt_256",
    "decrypt_256",
    "encrypt_64k",
    "sign_ecdsa_p256",
    "sign_ed25519",
    "verify_ecdsa_p256",
    "datakey",
    "batch_encrypt_100x256",
    "new_connections_cached_context",
    "new_connections_default_context",
    "encrypt_cold_keys",
}
#: Served by kms's worker with kms's TLS settings, but neither kms's app nor its database.
FLOORS = {"floor_bare_wsgi", "floor_flask_jsonify"}


@pytest.mark.slow
def tiny_bench(tmp_path: Path, *arguments: str) -> tuple[str, list[dict]]:
    """A tiny ``python -m bench`` run on SQLite: its output and its JSON documents."""
    output = tmp_path / "results.json"
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("KMS_")
        and name not in ("POSTGRES_BENCH_DSN", "BENCH_SECONDS", "BENCH_BACKEND")
    }
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            # The harness is under test, not kms's speed: each scenario runs briefly, from one
            # client process with two connections (a window of 0.3 s but little load in it).
            "--seconds",
            "0.3",
            "--warmup",
            "0.05",
            "--processes",
            "1",
            "--connections",
            "2",
            "--keys",
            str(KEYS),
            "--cold-keys",
            "50",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output",
            str(output),
            *arguments,
        ],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "SQLite only" in finished.stdout
    return finished.stdout, json.loads(output.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_a_tiny_bench_run_reports_every_scenario(tmp_path: Path) -> None:
    printed, documents = tiny_bench(tmp_path, "--memory-versions", str(KEYS))
    scenarios = {d["name"]: d for d in documents if d["kind"] == "scenario"}
    assert set(scenarios) == SCENARIOS | {"memory_cached_versions"}
    floors = {d["name"]: d for d in documents if d["kind"] == "floor"}
    assert set(floors) == FLOORS
    for name in SCENARIOS | FLOORS:
        result = scenarios.get(name) or floors[name]
        rate = result.get("items_per_s", result["requests_per_s"])
        assert rate > 0, result
        assert 0 < result["p50_ms"] <= result["p99_ms"], result
        # Every operation against the no-op and each floor, in the JSON and in the one table.
        assert result["ratio_to_floor_wsgi"] > 0, result
        assert result["ratio_to_floor_flask"] > 0, result
        # The table's row: database, backend, scenario, ..., then the ratios (a floor has none to
        # the no-op).
        (line,) = [line for line in printed.splitlines() if line.split()[2:3] == [name]]
        shown = [float(cell) for cell in line.split()[-2 if name in FLOORS else -3 :]]
        expected = [result["ratio_to_floor_flask"], result["ratio_to_floor_wsgi"]]
        if name not in FLOORS:
            expected.insert(0, result["ratio_to_baseline"])
        assert shown == pytest.approx(expected, abs=0.006), line
        if name in FLOORS:
            assert (result["database"], result["backend"]) == (None, None)
            continue
        assert (result["database"], result["backend"]) == ("sqlite", "passphrase")
        assert result["ratio_to_baseline"] > 0, result
    assert scenarios["baseline_healthz"]["ratio_to_baseline"] == 1.0
    assert floors["floor_bare_wsgi"]["ratio_to_floor_wsgi"] == 1.0
    assert floors["floor_flask_jsonify"]["ratio_to_floor_flask"] == 1.0
    assert scenarios["batch_encrypt_100x256"]["items_per_s"] == pytest.approx(
        100 * scenarios["batch_encrypt_100x256"]["requests_per_s"], rel=0.01
    )
    assert all(size > 0 for size in scenarios["encrypt_cold_keys"]["worker_rss_mb"])
    memory = scenarios["memory_cached_versions"]
    assert (memory["cached_versions"], memory["all_loaded"]) == (KEYS, True)
    assert memory["worker_rss_mb"] > 0
    assert memory["worker_rss_mb_all_versions"] == memory["worker_rss_mb"]
    (seeding,) = [d for d in documents if d["kind"] == "seeding"]
    assert seeding["keys"] == KEYS
    assert seeding["from_cache"] is False
    (targets,) = [d for d in documents if d["kind"] == "targets"]
    assert len(targets["checks"]) == len(TARGETS)
    assert {check["verdict"] for check in targets["checks"]} <= {"met", "MISSED"}


@pytest.mark.slow
def test_the_bench_runs_kms_on_a_softhsm2_token_beside_the_passphrase(tmp_path: Path) -> None:
    softhsm_module()
    only = ("baseline_healthz", "encrypt_256", "decrypt_256")
    printed, documents = tiny_bench(
        tmp_path,
        "--backend",
        "both",
        "--memory-versions",
        "0",
        *(f"--only={name}" for name in only),
    )
    assert "the root secret moved to a SoftHSM2 token" in printed
    results = {(d["name"], d["backend"]): d for d in documents if d["kind"] == "scenario"}
    assert set(results) == {(name, backend) for name in only for backend in BACKENDS}
    for name in only:
        pkcs11 = results[(name, "pkcs11")]
        passphrase = results[(name, "passphrase")]
        assert pkcs11["ratio_to_passphrase"] == pytest.approx(
            pkcs11["requests_per_s"] / passphrase["requests_per_s"], rel=0.01
        )
        assert "ratio_to_passphrase" not in passphrase
        assert pkcs11["ratio_to_baseline"] > 0
        # The table prints the ratio to two places, the JSON to three: 1.175 there may be 1.17.
        row = re.compile(rf"  sqlite     {name:32} +([0-9.]+)")
        (shown,) = [float(m.group(1)) for m in map(row.fullmatch, printed.splitlines()) if m]
        assert shown == pytest.approx(pkcs11["ratio_to_passphrase"], abs=0.006)


def test_the_load_generator_refuses_any_target_but_loopback(tmp_path: Path) -> None:
    for host in ("localhost", "10.0.0.1", "127.0.0.2", "::1"):
        with pytest.raises(BenchError, match="only targets 127.0.0.1"):
            Client(port=443, ca=tmp_path, cert=tmp_path, key=tmp_path, host=host)
    assert Client(port=443, ca=tmp_path, cert=tmp_path, key=tmp_path).host == "127.0.0.1"


def test_a_response_is_complete_at_its_content_length() -> None:
    head = b"HTTP/1.1 201 CREATED\r\nServer: x\r\nContent-Length: 5\r\n\r\n"
    assert parse_response(head[:-2]) is None
    assert parse_response(head) == (201, len(head) + 5)
    assert parse_response(head.replace(b"Content-Length", b"content-length")) == (
        201,
        len(head) + 5,
    )
    with pytest.raises(BenchError, match="without Content-Length"):
        parse_response(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n")
