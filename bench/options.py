"""The command line of ``python -m bench`` and the plan it makes: what to run, and how long."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Measured seconds per scenario. A whole default run (both databases, the floors, 1,000,000 keys
#: seeded and copied) takes about 4 to 5 minutes on a 2-core machine: under 6.
DEFAULT_SECONDS = 4.0
DEFAULT_KEYS = 1_000_000
DEFAULT_COLD_KEYS = 100_000
MEMORY_CACHE_SIZE = 100_000
BACKENDS = ("passphrase", "pkcs11", "both")


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
    #: The master-key backends of the SQLite rounds: ("passphrase",), ("pkcs11",) or both.
    backends: tuple[str, ...] = ("passphrase",)

    def wanted(self, name: str) -> bool:
        return not self.only or name in self.only


def parse_arguments(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=description)
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
        "--backend",
        choices=BACKENDS,
        default=os.environ.get("BENCH_BACKEND") or "passphrase",
        help="the master-key backend of the SQLite round: pkcs11 runs kms on a SoftHSM2 token "
        "made in a temporary directory; both adds a pkcs11 round of the no-op, encrypt and "
        "decrypt and prints pkcs11 / passphrase (env BENCH_BACKEND; default passphrase)",
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
    arguments = parser.parse_args(argv)
    if arguments.cold_keys > arguments.keys:
        parser.error("--cold-keys cannot exceed --keys")
    if arguments.backend != "passphrase" and arguments.no_sqlite:
        parser.error("--backend pkcs11 and both apply to the SQLite round: not with --no-sqlite")
    return arguments


def plan_of(arguments: argparse.Namespace) -> Plan:
    backends = {
        "passphrase": ("passphrase",),
        "pkcs11": ("pkcs11",),
        "both": ("passphrase", "pkcs11"),
    }[arguments.backend]
    return Plan(
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
        backends=backends,
    )
