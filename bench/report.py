"""The results: one per scenario and server, their ratios, the targets, the table and the JSON.

Every operation's rate is divided by three references measured in the same run: the no-op of
the same kms server (``baseline_healthz``: ``x no-op``) and the two floors (``bench.floor``: a
Flask app with one ``jsonify`` route, ``x flask``, and a bare WSGI callable, ``x wsgi``, both on
kms's worker with kms's TLS settings). The floors do not depend on the database or the master-key
backend: one figure each stands for every round. A ``--backend both`` run also divides each
pkcs11 figure by the passphrase backend's for the same scenario and database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.load import BenchError, Measured
from bench.scenarios import BASELINE, FLOOR_FLASK, FLOOR_WSGI

MEMORY = "memory_cached_versions"
#: Where the floors are recorded: they run against no database.
NO_DATABASE = "-"


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
    backend: str = "passphrase"
    ratio_to_baseline: float | None = None
    #: Rate against each floor's (``FLOOR_FLASK``, ``FLOOR_WSGI``), where measured.
    ratio_to_floor: dict[str, float] = field(default_factory=dict)
    #: pkcs11 rounds only: rate against the passphrase backend's for the same scenario.
    ratio_to_passphrase: float | None = None
    extra: dict | None = None

    @property
    def rate(self) -> float:
        """Operations per second: items for a batch, requests otherwise."""
        return self.requests_per_s * self.items_per_request

    @property
    def is_floor(self) -> bool:
        return self.name in (FLOOR_WSGI, FLOOR_FLASK)

    def document(self) -> dict:
        document: dict = {
            "name": self.name,
            "kind": "floor" if self.is_floor else "scenario",
            "database": None if self.is_floor else self.database,
            "backend": None if self.is_floor else self.backend,
        }
        if self.items_per_request > 1:
            document["items_per_s"] = round(self.rate, 1)
        document["requests_per_s"] = round(self.requests_per_s, 1)
        document.update(
            p50_ms=round(self.p50_ms, 3),
            p99_ms=round(self.p99_ms, 3),
            ratio_to_baseline=_rounded(self.ratio_to_baseline),
            ratio_to_floor_flask=_rounded(self.ratio_to_floor.get(FLOOR_FLASK)),
            ratio_to_floor_wsgi=_rounded(self.ratio_to_floor.get(FLOOR_WSGI)),
            seconds=self.seconds,
            requests=self.requests,
        )
        if self.ratio_to_passphrase is not None:
            document["ratio_to_passphrase"] = _rounded(self.ratio_to_passphrase)
        document.update(self.extra or {})
        return document


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summarise(
    name: str, database: str, measured: Measured, seconds: float, items: int, backend: str
) -> Result:
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
        backend=backend,
    )


def add_ratios(results: list[Result]) -> None:
    baselines = {(r.database, r.backend): r for r in results if r.name == BASELINE}
    floors = {r.name: r for r in results if r.is_floor}
    passphrase = {(r.database, r.name): r for r in results if r.backend == "passphrase"}
    for result in results:
        if result.name == MEMORY:
            continue
        for name, floor in floors.items():
            result.ratio_to_floor[name] = result.rate / floor.requests_per_s
        if result.is_floor:
            continue
        baseline = baselines.get((result.database, result.backend))
        if baseline is not None:
            result.ratio_to_baseline = result.rate / baseline.requests_per_s
        if result.backend != "passphrase":
            other = passphrase.get((result.database, result.name))
            if other is not None:
                result.ratio_to_passphrase = result.rate / other.rate


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
        return found[a].rate / found[b].rate

    return measure


def _max_rss(found: dict[str, Result]) -> float | None:
    memory = found.get(MEMORY)
    if memory is None or not memory.extra:
        return None
    return memory.extra["worker_rss_mb_all_versions"]


TARGETS = (
    Target("encrypt 256 B / baseline", _ratio("encrypt_256", BASELINE), 0.9),
    Target("decrypt 256 B / baseline", _ratio("decrypt_256", BASELINE), 0.9),
    Target("sign ECDSA-P256 / baseline", _ratio("sign_ecdsa_p256", BASELINE), 0.8),
    Target("sign Ed25519 / baseline", _ratio("sign_ed25519", BASELINE), 0.8),
    Target("encrypt 256 B / bare WSGI floor", _ratio("encrypt_256", FLOOR_WSGI), 0.5),
    Target("decrypt 256 B / bare WSGI floor", _ratio("decrypt_256", FLOOR_WSGI), 0.5),
    Target(
        "encrypt p99 / baseline p99",
        _ratio("encrypt_256", BASELINE, "p99"),
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


def _ratio_cell(value: float | None) -> str:
    return "" if value is None else f"{value:7.2f}"


def print_table(results: list[Result]) -> None:
    print()
    print(
        f"{'database':10} {'backend':10} {'scenario':32} {'req/s':>9} {'items/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'x no-op':>7} {'x flask':>7} {'x wsgi':>7}"
    )
    for r in results:
        if r.name == MEMORY:
            continue
        items = f"{r.rate:9.1f}" if r.items_per_request > 1 else ""
        print(
            f"{NO_DATABASE if r.is_floor else r.database:10} "
            f"{NO_DATABASE if r.is_floor else r.backend:10} {r.name:32} "
            f"{r.requests_per_s:9.1f} {items:>9} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
            f"{_ratio_cell(r.ratio_to_baseline):>7} "
            f"{_ratio_cell(r.ratio_to_floor.get(FLOOR_FLASK)):>7} "
            f"{_ratio_cell(r.ratio_to_floor.get(FLOOR_WSGI)):>7}"
        )
    compared = [r for r in results if r.ratio_to_passphrase is not None]
    if compared:
        print()
        print("pkcs11 backend / passphrase backend, same scenario and database:")
        for r in compared:
            print(f"  {r.database:10} {r.name:32} {r.ratio_to_passphrase:7.2f}")


def check_targets(results: list[Result]) -> list[dict]:
    checks: list[dict] = []
    print()
    print("targets (issues 12 and 27):")
    # The memory scenario and the floors run once and do not depend on the database: their
    # figures stand for every round. The cached / default context ratio is only taken where both
    # were measured (the first round): each round's server and load differ.
    shared = {r.name: r for r in results if r.name == MEMORY or r.is_floor}
    rounds = dict.fromkeys((r.database, r.backend) for r in results if not r.is_floor)
    for database, backend in rounds:
        found = shared | {
            r.name: r for r in results if (r.database, r.backend) == (database, backend)
        }
        label = database if backend == "passphrase" else f"{database}/{backend}"
        for target in TARGETS:
            value, verdict = target.check(found)
            sign = "<=" if target.at_most else ">="
            shown = "-" if value is None else f"{value:.2f}"
            print(
                f"  {label:17} {target.description:45} {shown:>8} "
                f"(target {sign} {target.threshold:g}): {verdict}"
            )
            checks.append(
                {
                    "database": database,
                    "backend": backend,
                    "target": target.description,
                    "value": None if value is None else round(value, 3),
                    "threshold": target.threshold,
                    "at_most": target.at_most,
                    "verdict": verdict,
                }
            )
    return checks


def report(results: list[Result]) -> list[dict]:
    """Print the table, the backend comparison and the targets; the target checks for the JSON."""
    print_table(results)
    return check_targets(results)
