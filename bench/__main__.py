"""``make bench``: requests/s, p50 and p99 of kms operations, as ratios to a no-op and to floors.

    python -m bench [--seconds 4] [--postgres-dsn URL] [--backend passphrase|pkcs11|both]
                    [--output bench/results.json]

Not a test: it measures, prints one table (each operation against kms's no-op, a Flask app with
one route and a bare WSGI callable, all on kms's worker and TLS), the targets (met or missed),
and writes ``bench/results.json``. See docs/performance.md. The parts: ``bench.options`` (the
command line), ``bench.scenarios`` (the requests), ``bench.run`` (the servers and rounds),
``bench.report`` (ratios, targets, table), ``bench.floor`` (the floors), ``bench.server``,
``bench.load``, ``bench.seed``, ``bench.hsm``, ``bench.profile``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.load import BenchError
from bench.options import parse_arguments, plan_of
from bench.report import add_ratios, report
from bench.run import Run, progress, seeded_postgres
from bench.seed import copy_database, seeded_sqlite
from bench.server import make_certificates


def _interrupted(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv, __doc__.split("\n")[0])
    plan = plan_of(arguments)
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
                for backend in plan.backends:
                    run.database_round(
                        "sqlite",
                        str(database),
                        passphrase,
                        first=backend == plan.backends[0],
                        backend=backend,
                    )
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
                # The PostgreSQL copy is kept between runs: it stays on the passphrase backend.
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
