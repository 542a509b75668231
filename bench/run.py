"""One run of the benchmark: the servers it starts, in order, and what it measures on each.

A round is one kms server on one database (and one master-key backend): the hot scenarios, then
the cold keys. The first round also runs the floors (``bench.floor``, before kms's server), the
default-TLS-context comparison and the memory scenario, none of which depends on the database.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import replace
from pathlib import Path

from bench.hsm import make_token, seal_with_token
from bench.load import Load, encode_request, run_load
from bench.options import MEMORY_CACHE_SIZE, Plan
from bench.profile import profiling, summary
from bench.report import MEMORY, NO_DATABASE, Result, summarise
from bench.scenarios import (
    BACKEND_SCENARIOS,
    FLOORS,
    Scenario,
    cold_requests,
    floor_scenario,
    hot_scenarios,
    post,
)
from bench.seed import MANY_VERSIONS_KEY, Seeded, copy_to_postgres
from bench.server import RunningServer, ServerOptions, running_floor, running_server

MEMORY_CACHE_BYTES = 64 * 1024 * 1024
#: Items per batch decrypt of the memory scenario: small enough that an answer comes back within
#: seconds even on a busy machine (each item loads a version: a row read, a MAC, an unwrap).
BATCH_ITEMS = 250
#: The memory scenario's first phase (a share of --memory-seconds); the growth per version is
#: measured over the rest.
FIRST_MEMORY_PHASE = 0.25


class Run:
    def __init__(self, plan: Plan, directory: Path, seeded: Seeded) -> None:
        self.plan = plan
        self.seeded = seeded
        self.directory = directory
        self.results: list[Result] = []
        self.rng = random.Random()  # noqa: S311 - which keys to touch, not a secret

    def wanted(self, name: str) -> bool:
        return self.plan.wanted(name)

    def measure(
        self,
        server: RunningServer,
        scenario: Scenario,
        database: str,
        backend: str = "passphrase",
    ) -> Result:
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
                label = f"{database}-{backend}-{scenario.name}".replace(NO_DATABASE, "floor")
                window = self.plan.warmup + self.plan.seconds + 0.3
                with profiling(self.plan.profile, label, server.worker_pids(), window):
                    measured = run_load(server.client, load, self.plan.warmup, self.plan.seconds)
                progress(summary(self.plan.profile, label))
        finally:
            sampler.cancel()
        result = summarise(
            scenario.name, database, measured, self.plan.seconds, scenario.items, backend
        )
        if split:
            result.extra = {"connections_per_worker": split}
        self.results.append(result)
        shown = database if backend == "passphrase" else f"{database}/{backend}"
        progress(
            f"  {shown:10} {scenario.name:32} {result.rate:9.1f}/s"
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

    def floor_round(self, dsn: str, passphrase: Path) -> None:
        """The floors, each on a server of its own with the settings kms's server gets."""
        for name, app in FLOORS:
            if self.wanted(name):
                options = self.options(dsn, passphrase)
                with running_floor(self.directory, options, app) as server:
                    progress(f"floor: {app} up, workers {server.worker_pids()}")
                    self.measure(server, floor_scenario(name), NO_DATABASE)

    def database_round(
        self, database: str, dsn: str, passphrase: Path, *, first: bool, backend: str = "passphrase"
    ) -> None:
        """Every scenario against one database (``BACKEND_SCENARIOS`` only, for the pkcs11 round
        of ``--backend both``). The floors, the default-context TLS comparison and the memory
        scenario do not depend on the database: only the first round runs them."""
        plan = self.plan
        if first:
            self.floor_round(dsn, passphrase)
        options = self.options(dsn, passphrase)
        if backend == "pkcs11":
            token = make_token(self.directory.parent / "softhsm")
            options = seal_with_token(self.directory, token, options)
            progress(f"{database}: the root secret moved to a SoftHSM2 token (kms rekey --to)")
        again = backend != plan.backends[0]
        with running_server(self.directory, options) as server:
            progress(f"{database}/{backend}: kms serve up, workers {server.worker_pids()}")
            for scenario in hot_scenarios(server.client):
                if self.wanted(scenario.name) and (not again or scenario.name in BACKEND_SCENARIOS):
                    self.measure(server, scenario, database, backend)
            if self.wanted("encrypt_cold_keys") and not again:
                requests = cold_requests(plan.keys, plan.cold_keys, self.rng)
                result = self.measure(
                    server, Scenario("encrypt_cold_keys", requests), database, backend
                )
                rss = server.worker_rss_mb()
                result.extra = {
                    **(result.extra or {}),
                    "keys_in_database": plan.keys,
                    "cold_keys": plan.cold_keys,
                    "worker_rss_mb": [round(size, 1) for size in rss],
                }
                progress(f"  {database:10} worker RSS after cold keys: {fmt_rss(rss)}")
        if again:
            return
        if first and self.wanted("new_connections_default_context"):
            uncached = replace(options, tls_context_cache=False)
            with running_server(self.directory, uncached) as server:
                scenario = Scenario(
                    "new_connections_default_context",
                    [encode_request("GET", "/healthz", keep_alive=False)],
                    keep_alive=False,
                )
                self.measure(server, scenario, database, backend)
        if first and self.wanted(MEMORY) and plan.memory_versions > 0:
            self.memory_round(database, options, backend)

    def memory_round(self, database: str, base: ServerOptions, backend: str) -> None:
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
        options = replace(
            base,
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
            name=MEMORY,
            database=database,
            requests_per_s=answered / elapsed,
            p50_ms=0.0,
            p99_ms=0.0,
            seconds=round(elapsed, 1),
            requests=answered,
            items_per_request=BATCH_ITEMS,
            backend=backend,
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
