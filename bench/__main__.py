"""``make bench``: requests/s, p50 and p99 of kms operations, as ratios to a no-op on one stack.

    python -m bench [--seconds 5] [--postgres-dsn URL] [--output bench/results.json]

Not a test: it measures, prints a table with the issue's targets (met or missed) and writes
``bench/results.json``. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.load import BenchError, Client, Load, Measured, encode_request, request_once, run_load
from bench.profile import profiling, summary
from bench.seed import (
    MANY_VERSIONS_KEY,
    Seeded,
    cold_key_id,
    copy_database,
    copy_to_postgres,
    seeded_sqlite,
)
from bench.server import RunningServer, ServerOptions, make_certificates, running_server

HERE = Path(__file__).resolve().parent
DEFAULT_SECONDS = 4.0
DEFAULT_WARMUP = 1.0
DEFAULT_KEYS = 1_000_000
DEFAULT_COLD_KEYS = 100_000
MEMORY_CACHE_SIZE = 100_000
MEMORY_CACHE_BYTES = 64 * 1024 * 1024
#: Items per batch decrypt of the memory scenario: small enough that an answer comes back within
#: seconds even on a busy machine (each item loads a version: a row read, a MAC, an unwrap).
BATCH_ITEMS = 250
#: The memory scenario's first phase (a share of --memory-seconds); the growth per version is
#: measured over the rest.
FIRST_MEMORY_PHASE = 0.25

FIRST_ROUND_ONLY = frozenset({"new_connections_default_context", "memory_cached_versions"})

HOT_AES = "bench-hot-aes"
HOT_P256 = "bench-hot-p256"
HOT_ED25519 = "bench-hot-ed25519"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def post(path: str, document: object, *, keep_alive: bool = True) -> bytes:
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return encode_request("POST", "/v1/kms" + path, body, keep_alive=keep_alive)


def call(client: Client, path: str, document: object, expect: tuple[int, ...] = (200,)) -> dict:
    status, body = request_once(client, post(path, document))
    if status not in expect:
        raise BenchError(f"set-up POST {path} answered {status}: {body[:300]!r}")
    return json.loads(body)


@dataclass
class Result:
    name: str
    database: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    seconds: float
    requests: int
    items_per_request: int = 1
    ratio_to_baseline: float | None = None
    extra: dict | None = None

    def document(self) -> dict:
        document: dict = {"name": self.name, "kind": "scenario", "database": self.database}
        if self.items_per_request > 1:
            document["items_per_s"] = round(self.requests_per_s * self.items_per_request, 1)
            document["requests_per_s"] = round(self.requests_per_s, 1)
        else:
            document["requests_per_s"] = round(self.requests_per_s, 1)
        document.update(
            p50_ms=round(self.p50_ms, 3),
            p99_ms=round(self.p99_ms, 3),
            ratio_to_baseline=None
            if self.ratio_to_baseline is None
            else round(self.ratio_to_baseline, 3),
            seconds=self.seconds,
            requests=self.requests,
        )
        document.update(self.extra or {})
        return document


def summarise(name: str, database: str, measured: Measured, seconds: float, items: int) -> Result:
    latencies = sorted(measured.latencies)
    if not latencies:
        raise BenchError(f"{name}: no request completed inside the measured window")

    def percentile(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1000

    return Result(
        name=name,
        database=database,
        requests_per_s=len(latencies) / seconds,
        p50_ms=percentile(0.50),
        p99_ms=percentile(0.99),
        seconds=seconds,
        requests=len(latencies),
        items_per_request=items,
    )


@dataclass(frozen=True)
class Plan:
    seconds: float
    warmup: float
    processes: int
    connections: int
    keys: int
    cold_keys: int
    memory_seconds: float
    memory_versions: int
    workers: int | None
    threads: int | None
    only: frozenset[str]
    profile: Path | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    requests: list[bytes]
    items: int = 1
    keep_alive: bool = True
    expect: bytes = b""


def hot_scenarios(client: Client) -> list[Scenario]:
    """Make the hot keys (through the API, as a client would) and the requests that use them."""
    for key_id, purpose, algorithm in (
        (HOT_AES, "encrypt", "AES-256-GCM"),
        (HOT_P256, "sign", "ECDSA-P256"),
        (HOT_ED25519, "sign", "Ed25519"),
    ):
        call(
            client,
            "/keys",
            {"key_id": key_id, "purpose": purpose, "algorithm": algorithm},
            expect=(200, 201, 409),
        )
    small = os.urandom(256)
    ciphertext = call(client, "/encrypt", {"key_id": HOT_AES, "plaintext": b64(small)})
    signature = call(client, "/sign", {"key_id": HOT_P256, "message": b64(small)})
    verified = call(
        client,
        "/verify",
        {"key_id": HOT_P256, "message": b64(small), "signature": signature["signature"]},
    )
    if verified.get("valid") is not True:
        raise BenchError("set-up: the ECDSA signature kms made does not verify")
    healthz = encode_request("GET", "/healthz")
    return [
        Scenario("baseline_healthz", [healthz]),
        Scenario("encrypt_256", [post("/encrypt", {"key_id": HOT_AES, "plaintext": b64(small)})]),
        Scenario(
            "decrypt_256",
            [post("/decrypt", {"key_id": HOT_AES, "ciphertext": ciphertext["ciphertext"]})],
        ),
        Scenario(
            "encrypt_64k",
            [post("/encrypt", {"key_id": HOT_AES, "plaintext": b64(os.urandom(64 * 1024))})],
        ),
        Scenario("sign_ecdsa_p256", [post("/sign", {"key_id": HOT_P256, "message": b64(small)})]),
        Scenario("sign_ed25519", [post("/sign", {"key_id": HOT_ED25519, "message": b64(small)})]),
        Scenario(
            "verify_ecdsa_p256",
            [
                post(
                    "/verify",
                    {
                        "key_id": HOT_P256,
                        "message": b64(small),
                        "signature": signature["signature"],
                    },
                )
            ],
            expect=b'"valid":true',
        ),
        Scenario("datakey", [post("/datakey", {"key_id": HOT_AES})]),
        Scenario(
            "batch_encrypt_100x256",
            [
                post(
                    "/encrypt",
                    {"key_id": HOT_AES, "batch": [{"plaintext": b64(small)} for _ in range(100)]},
                )
            ],
            items=100,
        ),
        Scenario(
            "new_connections_cached_context",
            [encode_request("GET", "/healthz", keep_alive=False)],
            keep_alive=False,
        ),
    ]


def cold_requests(keys: int, cold_keys: int, rng: random.Random) -> list[bytes]:
    """Encrypts spread over ``cold_keys`` of the ``keys`` seeded ones, in random order."""
    plaintext = b64(os.urandom(256))
    chosen = rng.sample(range(keys), cold_keys)
    return [post("/encrypt", {"key_id": cold_key_id(i), "plaintext": plaintext}) for i in chosen]


class Run:
    def __init__(self, plan: Plan, directory: Path, seeded: Seeded) -> None:
        self.plan = plan
        self.seeded = seeded
        self.directory = directory
        self.results: list[Result] = []
        self.rng = random.Random()  # noqa: S311 - which keys to touch, not a secret

    def wanted(self, name: str) -> bool:
        return not self.plan.only or name in self.plan.only

    def measure(self, server: RunningServer, scenario: Scenario, database: str) -> Result:
        load = Load(
            requests=scenario.requests,
            processes=self.plan.processes,
            connections=self.plan.connections,
            keep_alive=scenario.keep_alive,
            expect=scenario.expect,
        )
        # Which worker holds each kept-alive connection decides the throughput (2 workers, one
        # with most connections: one core does most of the work): sampled mid-window, reported.
        split: list[int] = []
        sampler = threading.Timer(
            0.3 + self.plan.warmup + self.plan.seconds / 2,
            lambda: split.extend(server.connections_per_worker()),
        )
        if scenario.keep_alive:
            sampler.start()
        try:
            if self.plan.profile is None:
                measured = run_load(server.client, load, self.plan.warmup, self.plan.seconds)
            else:
                label = f"{database}-{scenario.name}"
                window = self.plan.warmup + self.plan.seconds + 0.3
                with profiling(self.plan.profile, label, server.worker_pids(), window):
                    measured = run_load(server.client, load, self.plan.warmup, self.plan.seconds)
                progress(summary(self.plan.profile, label))
        finally:
            sampler.cancel()
        result = summarise(scenario.name, database, measured, self.plan.seconds, scenario.items)
        if split:
            result.extra = {"connections_per_worker": split}
        self.results.append(result)
        progress(
            f"  {database:10} {scenario.name:32} {result.requests_per_s * scenario.items:9.1f}/s"
            f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
            + (f"  connections per worker {split}" if split else "")
        )
        return result

    def options(self, dsn: str, passphrase: Path, **changes: object) -> ServerOptions:
        values: dict = {
            "database_dsn": dsn,
            "passphrase_file": passphrase,
            "workers": self.plan.workers,
            "threads": self.plan.threads,
        }
        values.update(changes)
        return ServerOptions(**values)

    def database_round(self, database: str, dsn: str, passphrase: Path, *, first: bool) -> None:
        """Every scenario against one database. The default-context TLS comparison and the
        memory scenario do not depend on the database: only the first round runs them."""
        plan = self.plan
        with running_server(self.directory, self.options(dsn, passphrase)) as server:
            progress(f"{database}: kms serve up, workers {server.worker_pids()}")
            for scenario in hot_scenarios(server.client):
                if self.wanted(scenario.name):
                    self.measure(server, scenario, database)
            if self.wanted("encrypt_cold_keys"):
                requests = cold_requests(plan.keys, plan.cold_keys, self.rng)
                result = self.measure(server, Scenario("encrypt_cold_keys", requests), database)
                rss = server.worker_rss_mb()
                result.extra = {
                    **(result.extra or {}),
                    "keys_in_database": plan.keys,
                    "cold_keys": plan.cold_keys,
                    "worker_rss_mb": [round(size, 1) for size in rss],
                }
                progress(f"  {database:10} worker RSS after cold keys: {fmt_rss(rss)}")
        if first and self.wanted("new_connections_default_context"):
            options = self.options(dsn, passphrase, tls_context_cache=False)
            with running_server(self.directory, options) as server:
                scenario = Scenario(
                    "new_connections_default_context",
                    [encode_request("GET", "/healthz", keep_alive=False)],
                    keep_alive=False,
                )
                self.measure(server, scenario, database)
        if first and self.wanted("memory_cached_versions") and plan.memory_versions > 0:
            self.memory_round(database, dsn, passphrase)

    def memory_round(self, database: str, dsn: str, passphrase: Path) -> None:
        """A worker's RSS before and after loading the versions of MANY_VERSIONS_KEY (100,000
        by default) into its key cache, raised to hold them all, by batch decrypts of BATCH_ITEMS
        ciphertexts, one per version. One worker, so that it certainly loads them all: the figure
        is a worker's, whatever the number of workers. If ``--memory-seconds`` ends the loading
        first, the RSS for all of them is projected from the growth per version so far."""
        plan = self.plan
        ciphertexts = self.seeded.ciphertexts.read_text(encoding="ascii").split()
        batches = [
            post(
                "/decrypt",
                {
                    "key_id": MANY_VERSIONS_KEY,
                    "batch": [{"ciphertext": text} for text in ciphertexts[at : at + BATCH_ITEMS]],
                },
            )
            for at in range(0, len(ciphertexts), BATCH_ITEMS)
        ]
        # Both bounds raised, as an operator who wants this many versions cached would: the
        # default byte bound (32 MiB) holds about 65,000 AEAD versions.
        options = self.options(
            dsn,
            passphrase,
            key_cache_size=max(MEMORY_CACHE_SIZE, len(ciphertexts)),
            key_cache_bytes=MEMORY_CACHE_BYTES,
            workers=1,
        )
        with running_server(self.directory, options) as server:
            warm = Load(requests=[encode_request("GET", "/healthz")], processes=1, connections=2)
            run_load(server.client, warm, 0.0, 0.5)
            before = server.worker_rss_mb()
            # Two phases: the growth per version is measured over the second, so that what the
            # first requests allocate once (buffers, statement caches) is not projected as if
            # every version cost it again.
            started = time.monotonic()
            answered = 0
            rss: list[float] = []
            for share in (FIRST_MEMORY_PHASE, 1 - FIRST_MEMORY_PHASE):
                left = batches[answered:]
                if left:
                    load = Load(
                        requests=left,
                        processes=1,
                        connections=min(2, len(left)),
                        reject=b'"error"',
                        once=True,
                    )
                    answered += run_load(
                        server.client, load, 0.0, plan.memory_seconds * share
                    ).answered
                rss.append(server.worker_rss_mb()[0])
                if share == FIRST_MEMORY_PHASE:
                    first_loaded = min(len(ciphertexts), answered * BATCH_ITEMS)
            elapsed = time.monotonic() - started
            after = [rss[-1]]
        loaded = min(len(ciphertexts), answered * BATCH_ITEMS)
        per_version_kb = (
            (rss[1] - rss[0]) * 1024 / (loaded - first_loaded)
            if loaded > first_loaded
            else (after[0] - before[0]) * 1024 / max(loaded, 1)
        )
        projected = after[0] + (len(ciphertexts) - loaded) * per_version_kb / 1024
        result = Result(
            name="memory_cached_versions",
            database=database,
            requests_per_s=answered / elapsed,
            p50_ms=0.0,
            p99_ms=0.0,
            seconds=round(elapsed, 1),
            requests=answered,
            items_per_request=BATCH_ITEMS,
            extra={
                "key_cache_size": options.key_cache_size,
                "key_cache_bytes": options.key_cache_bytes,
                "cached_versions": loaded,
                "all_loaded": loaded == len(ciphertexts),
                "worker_rss_mb_before": round(before[0], 1),
                "worker_rss_mb": round(after[0], 1),
                "kb_per_cached_version": round(per_version_kb, 2),
                "worker_rss_mb_after_first_phase": round(rss[0], 1),
                "versions_after_first_phase": first_loaded,
                "versions": len(ciphertexts),
                "worker_rss_mb_all_versions": round(projected, 1),
            },
        )
        self.results.append(result)
        progress(
            f"  {database:10} memory: {loaded:,} key versions loaded into one worker's cache in "
            f"{elapsed:.1f} s: RSS {before[0]:.0f} MB -> {after[0]:.0f} MB "
            f"({per_version_kb:.2f} KB per version from {first_loaded:,} on)"
            + ("" if loaded == len(ciphertexts) else f"; {projected:.0f} MB projected for all")
        )


def fmt_rss(sizes: list[float]) -> str:
    return "/".join(f"{size:.0f}" for size in sizes) + " MB"


def progress(line: str) -> None:
    print(line, flush=True)


def _database_url(dsn: str, name: str) -> str:
    base, _, database = dsn.rpartition("/")
    query = "?" + database.split("?", 1)[1] if "?" in database else ""
    return f"{base}/{name}{query}"


def seeded_postgres(dsn: str, seeded: Seeded, *, fresh: bool) -> tuple[str, float | None]:
    """The seeded PostgreSQL database beside the one ``dsn`` names, and the seconds its copy
    took (None when an earlier run's copy was reused).

    Copying 1,000,000 keys takes minutes, so the database is kept between runs, as the seeded
    SQLite file is: its name is derived from that file (``kms_bench_<hash>``), and it gets that
    name only once its copy is complete (it is copied under ``<name>_partial`` and renamed), so a
    database by that name is always a whole copy of the same keys under the same passphrase. A
    run's own writes (use counters, last uses) stay in it, which no scenario depends on.
    ``fresh`` (``--fresh-postgres``) copies again. Drop it with ``DROP DATABASE kms_bench_...``.
    """
    import psycopg
    from psycopg import sql

    fingerprint = hashlib.sha256(seeded.database.name.encode())
    fingerprint.update(seeded.passphrase_file.read_bytes())
    name = f"kms_bench_{fingerprint.hexdigest()[:16]}"
    partial = f"{name}_partial"
    plain = dsn.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and not fresh:
            return _database_url(dsn, name), None
        for stale in (name, partial):
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(stale))
            )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(partial)))
    seconds = copy_to_postgres(seeded, _database_url(dsn, partial))
    with psycopg.connect(plain, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(partial), sql.Identifier(name)
            )
        )
    return _database_url(dsn, name), seconds


# -- ratios and targets ---------------------------------------------------------------------


def add_ratios(results: list[Result]) -> None:
    baselines = {r.database: r for r in results if r.name == "baseline_healthz"}
    for result in results:
        baseline = baselines.get(result.database)
        if baseline is None or result.name == "memory_cached_versions":
            continue
        rate = result.requests_per_s * result.items_per_request
        result.ratio_to_baseline = rate / baseline.requests_per_s


@dataclass(frozen=True)
class Target:
    description: str
    measure: Callable[[dict[str, Result]], float | None]
    threshold: float
    at_most: bool = False

    def check(self, found: dict[str, Result]) -> tuple[float | None, str]:
        value = self.measure(found)
        if value is None:
            return None, "not measured"
        met = value <= self.threshold if self.at_most else value >= self.threshold
        return value, "met" if met else "MISSED"


def _ratio(a: str, b: str, field: str = "rate") -> Callable[[dict[str, Result]], float | None]:
    def measure(found: dict[str, Result]) -> float | None:
        if a not in found or b not in found:
            return None
        if field == "p99":
            return found[a].p99_ms / found[b].p99_ms
        rate_a = found[a].requests_per_s * found[a].items_per_request
        return rate_a / (found[b].requests_per_s * found[b].items_per_request)

    return measure


def _max_rss(found: dict[str, Result]) -> float | None:
    memory = found.get("memory_cached_versions")
    if memory is None or not memory.extra:
        return None
    return memory.extra["worker_rss_mb_all_versions"]


TARGETS = (
    Target("encrypt 256 B / baseline", _ratio("encrypt_256", "baseline_healthz"), 0.9),
    Target("decrypt 256 B / baseline", _ratio("decrypt_256", "baseline_healthz"), 0.9),
    Target("sign ECDSA-P256 / baseline", _ratio("sign_ecdsa_p256", "baseline_healthz"), 0.8),
    Target("sign Ed25519 / baseline", _ratio("sign_ed25519", "baseline_healthz"), 0.8),
    Target(
        "encrypt p99 / baseline p99",
        _ratio("encrypt_256", "baseline_healthz", "p99"),
        2.0,
        at_most=True,
    ),
    Target(
        "new connections: cached / default context",
        _ratio("new_connections_cached_context", "new_connections_default_context"),
        1.25,
    ),
    Target(
        "batch of 100 items/s / single encrypt",
        _ratio("batch_encrypt_100x256", "encrypt_256"),
        25.0,
    ),
    Target("cold keys / hot key encrypt", _ratio("encrypt_cold_keys", "encrypt_256"), 0.5),
    Target("worker RSS, 100k versions cached (MB)", _max_rss, 150.0, at_most=True),
)


def report(results: list[Result]) -> list[dict]:
    print()
    print(
        f"{'database':10} {'scenario':32} {'req/s':>9} {'items/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'x base':>7}"
    )
    for r in results:
        if r.name == "memory_cached_versions":
            continue
        items = f"{r.requests_per_s * r.items_per_request:9.1f}" if r.items_per_request > 1 else ""
        ratio = "" if r.ratio_to_baseline is None else f"{r.ratio_to_baseline:7.2f}"
        print(
            f"{r.database:10} {r.name:32} {r.requests_per_s:9.1f} {items:>9} {r.p50_ms:8.2f} "
            f"{r.p99_ms:8.2f} {ratio:>7}"
        )
    checks: list[dict] = []
    print()
    print("targets (issue 12):")
    for database in dict.fromkeys(r.database for r in results):
        # The memory scenario runs in the first round only and does not depend on the database:
        # its figure stands for every database. The cached / default context ratio is only
        # taken where both were measured (the first round): each round's server and load differ.
        shared = {r.name: r for r in results if r.name == "memory_cached_versions"}
        found = shared | {r.name: r for r in results if r.database == database}
        for target in TARGETS:
            value, verdict = target.check(found)
            sign = "<=" if target.at_most else ">="
            shown = "-" if value is None else f"{value:.2f}"
            print(
                f"  {database:10} {target.description:45} {shown:>8} "
                f"(target {sign} {target.threshold:g}): {verdict}"
            )
            checks.append(
                {
                    "database": database,
                    "target": target.description,
                    "value": None if value is None else round(value, 3),
                    "threshold": target.threshold,
                    "at_most": target.at_most,
                    "verdict": verdict,
                }
            )
    return checks


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    environment_seconds = os.environ.get("BENCH_SECONDS")
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(environment_seconds) if environment_seconds else DEFAULT_SECONDS,
        help="measured seconds per scenario (env BENCH_SECONDS; default 4)",
    )
    parser.add_argument("--warmup", type=float, default=None, help="default: min(1, seconds)")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--connections", type=int, default=4, help="connections per process")
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS, help="keys seeded")
    parser.add_argument("--cold-keys", type=int, default=DEFAULT_COLD_KEYS)
    parser.add_argument(
        "--memory-versions",
        type=int,
        default=MEMORY_CACHE_SIZE,
        help="versions of one key loaded into a worker's cache for its RSS (0: skip)",
    )
    parser.add_argument(
        "--memory-seconds",
        type=float,
        default=35.0,
        help="at most this long loading them; the rest is projected (default 35)",
    )
    parser.add_argument("--workers", type=int, default=None, help="default: kms's own default")
    parser.add_argument("--threads", type=int, default=None, help="default: kms's own default")
    parser.add_argument(
        "--only", action="append", default=[], help="run only this scenario (repeatable)"
    )
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("POSTGRES_BENCH_DSN") or None,
        help="a role with CREATEDB: the seeded keys are copied into a database beside it, "
        "kept for later runs (POSTGRES_BENCH_DSN)",
    )
    parser.add_argument(
        "--fresh-postgres",
        action="store_true",
        help="copy the seeded keys into PostgreSQL again instead of reusing an earlier copy",
    )
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="sample the workers with py-spy during each scenario into this directory",
    )
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache")
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    return parser.parse_args(argv)


def _interrupted(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.cold_keys > arguments.keys:
        raise SystemExit("bench: --cold-keys cannot exceed --keys")
    plan = Plan(
        seconds=arguments.seconds,
        warmup=min(1.0, arguments.seconds) if arguments.warmup is None else arguments.warmup,
        processes=arguments.processes,
        connections=arguments.connections,
        keys=arguments.keys,
        cold_keys=arguments.cold_keys,
        memory_seconds=arguments.memory_seconds,
        memory_versions=arguments.memory_versions,
        workers=arguments.workers,
        threads=arguments.threads,
        only=frozenset(arguments.only),
        profile=arguments.profile,
    )
    # SIGTERM unwinds like Ctrl-C: the servers stop and a PostgreSQL database is dropped.
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.monotonic()
    progress(
        f"bench: {plan.processes} client processes x {plan.connections} connections, "
        f"{plan.seconds:g} s per scenario after {plan.warmup:g} s warm-up, {os.cpu_count()} cores"
    )
    seeded = seeded_sqlite(
        arguments.cache_dir, plan.keys, plan.memory_versions, os.cpu_count() or 2
    )
    seeding = {
        "name": "seed_sqlite",
        "kind": "seeding",
        "keys": plan.keys,
        "seconds": round(seeded.seconds, 2),
        "from_cache": seeded.cached,
    }
    progress(
        f"seed: {plan.keys:,} keys "
        + ("from the cache" if seeded.cached else f"made in {seeded.seconds:.1f} s")
        + f" ({seeded.database.name})"
    )
    extra: list[dict] = [seeding]
    try:
        with tempfile.TemporaryDirectory(prefix="kms-bench-") as temporary:
            directory = Path(temporary)
            make_certificates(directory / "tls")
            run = Run(plan, directory / "tls", seeded)
            if not arguments.no_sqlite:
                database, passphrase = copy_database(seeded, directory)
                run.database_round("sqlite", str(database), passphrase, first=True)
            if arguments.postgres_dsn:
                url, copied = seeded_postgres(
                    arguments.postgres_dsn, seeded, fresh=arguments.fresh_postgres
                )
                extra.append(
                    {
                        "name": "seed_postgresql",
                        "kind": "seeding",
                        "keys": plan.keys,
                        "seconds": round(copied or 0.0, 2),
                        "from_cache": copied is None,
                    }
                )
                progress(
                    f"seed: {plan.keys:,} keys "
                    + (
                        f"copied into PostgreSQL in {copied:.1f} s"
                        if copied is not None
                        else "in PostgreSQL from an earlier run"
                    )
                    + f" ({url.rpartition('/')[2]})"
                )
                passphrase = directory / "master.passphrase"
                if not passphrase.exists():
                    copy_database(seeded, directory)
                run.database_round("postgresql", url, passphrase, first=arguments.no_sqlite)
            else:
                progress("bench: no --postgres-dsn / POSTGRES_BENCH_DSN: SQLite only")
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    add_ratios(run.results)
    checks = report(run.results)
    total = time.monotonic() - started
    print(f"\nbench: {total:.0f} s in all")
    documents = [result.document() for result in run.results]
    documents += extra
    documents.append(
        {"name": "targets", "kind": "targets", "checks": checks, "total_seconds": round(total, 1)}
    )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(documents, indent=2) + "\n", encoding="utf-8")
    print(f"bench: wrote {arguments.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
