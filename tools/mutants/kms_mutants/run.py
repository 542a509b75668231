"""The run: every mutant of the target modules, each to a verdict (killed or survived).

1. The target modules are the files the ``targets`` globs match (tools/mutants/pyproject.toml),
   or those named with ``--only``. Their mutants (``kms_mutants.operators``) are put in an order
   that spreads each module evenly over the run (a stable hash order within a module, the modules
   interleaved in proportion to their size): a run stopped by its time limit or by Ctrl-C has
   run the same share of every module, a deterministic sample, and says how many it did not run.
   ``[tool.kms-mutants.sample]`` runs a deterministic share of a module's mutants (the same ones
   each time while their lines do not change), ``--sample F`` a share F of every module's.
2. ``--jobs`` copies of the repository run mutants in parallel, each through a fork server
   (``kms_mutants.copies``); the coverage run (``kms_mutants.coverage_run``, cached) first maps
   which test executes which line.
3. Each mutant meets its module's named tests in full, then the other tests that execute its line
   until one fails, up to the cap (``kms_mutants.selection``), those that killed a neighbour
   (a mutant of the same function, then module) earlier in the run first: which neighbours ran
   before depends on the two jobs' timing, so a rerun may order a mutant's tests differently
   (never its named tests). A mutant on a line no test executes
   is "not covered" without running anything. A run's timeout is 3 times the measured time of its
   tests plus pytest's start, plus 30 s; a timeout counts as killed (an infinite loop is a
   noticed bug).
4. No mutant starts after ``--minutes`` (43 by default, so the whole run, its report included,
   ends within 45 minutes): those left are reported "not run", never in the score.
5. docs/mutants.json and docs/mutants.md are written (``kms_mutants.report``), each survivor with
   its verdict (``kms_mutants.verdicts``) or "to judge".
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import os
import resource
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from queue import Queue
from typing import Any

from kms_mutants import report, verdicts
from kms_mutants.config import Config
from kms_mutants.copies import Runner, make_copy, warm
from kms_mutants.coverage_run import cache_file, coverage_map
from kms_mutants.deadlines import deadline as allowed
from kms_mutants.operators import (
    Mutant,
    mutants_of,
    mutated_source,
    names_read_in_functions,
    unparsed,
)
from kms_mutants.selection import CoverageMap


class Sources:
    """The modules as they were when the run started: editing the worktree meanwhile changes
    nothing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._text: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self._text:
            self._text[path] = (self.root / path).read_text(encoding="utf-8")
        return self._text[path]

    @functools.cache  # noqa: B019 - one per run
    def mutants(self, path: str) -> list[Mutant]:
        return mutants_of(path, self(path))

    @functools.cache  # noqa: B019 - one per run
    def unparsed(self, path: str) -> str:
        return unparsed(self(path))


class TestSources:
    """The source of each test function, to tell which tests are written about a module."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    def __init__(self, root: Path) -> None:
        self.root = root

    @functools.cache  # noqa: B019 - one per run
    def functions(self, file: str) -> dict[str, str]:
        """name -> source of each test function of ``file`` (methods as ``Class::name``)."""
        try:
            source = (self.root / file).read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, SyntaxError):
            return {}
        found: dict[str, str] = {}
        for node in tree.body:
            scopes = [("", node)]
            if isinstance(node, ast.ClassDef):
                scopes = [(f"{node.name}::", inner) for inner in node.body]
            for prefix, inner in scopes:
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                    found[prefix + inner.name] = ast.get_source_segment(source, inner) or ""
        return found

    @functools.cache  # noqa: B019 - one per run
    def mentions(self, node: str, word: str) -> bool:
        file, _, name = node.partition("::")
        text = self.functions(file).get(name.split("[")[0], "")
        return word.lower() in text.lower()


def _rank(mutant: Mutant) -> str:
    """A stable pseudo-random rank: the same for a mutant whose line and mutation are unchanged."""
    key = "\0".join([*mutant.anchor, str(mutant.index)])
    return hashlib.sha256(key.encode()).hexdigest()


def in_sample(mutant: Mutant, fraction: float) -> bool:
    if fraction >= 1.0:
        return True
    key = "\0".join(mutant.anchor)
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) < fraction * 0x1_0000_0000


def sample_share(options: argparse.Namespace, config: Config, path: str) -> float:
    """The share of ``path``'s mutants this run takes: ``--sample``, else the configuration's."""
    return config.sample_of(path) if options.sample is None else options.sample


def spread(mutants: list[Mutant]) -> list[Mutant]:
    """``mutants`` in the run's order: each module's in a stable hash order, the modules
    interleaved in proportion to their size (a cut anywhere has run the same share of each)."""
    by_module: dict[str, list[Mutant]] = {}
    for mutant in mutants:
        by_module.setdefault(mutant.path, []).append(mutant)
    placed: list[tuple[float, str, Mutant]] = []
    for path, mine in by_module.items():
        mine.sort(key=_rank)
        placed += [((rank + 0.5) / len(mine), path, mutant) for rank, mutant in enumerate(mine)]
    placed.sort(key=lambda item: (item[0], item[1]))
    return [mutant for _, _, mutant in placed]


def _cpu_minutes() -> float:
    """CPU minutes (user and system) of the processes this run started and reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) / 60


def _git(root: Path, *args: str) -> str:
    found = subprocess.run(  # noqa: S603 - git on our own repository
        ["git", "-C", str(root), *args],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else "?"


def run(options: argparse.Namespace, config: Config) -> int:
    root = config.root
    sources = Sources(root)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    modules = sorted(options.only) if options.only else config.target_modules()
    modules = [path for path in modules if sources.mutants(path)]
    every = [mutant for path in modules for mutant in sources.mutants(path)]
    skipped = [mutant for mutant in every if mutant.skip_reason]
    samples = {path: sample_share(options, config, path) for path in modules}
    mutants = spread([m for m in every if not m.skip_reason and in_sample(m, samples[m.path])])
    if options.list:
        for mutant in [*mutants, *skipped]:
            note = f"  (skipped: {mutant.skip_reason})" if mutant.skip_reason else ""
            print(f"{mutant.path}:{mutant.line}: {mutant.description}{note}")
        print(f"{len(mutants)} mutants in {len(modules)} modules, {len(skipped)} skipped")
        return 0
    pytest_options = [f"--postgres-dsn={options.postgres_dsn}"] if options.postgres_dsn else []
    test_files = config.test_files()
    named = {path: config.named_test_files(path, test_files) for path in modules}
    # Every target module (not only this run's) is re-printed in the copies, so a run with
    # --only shares the coverage run (and its cache) of the whole set.
    reprinted = sorted({*config.target_modules(), *modules})
    runner = Runner(root, pytest_options)
    outcomes: dict[Mutant, dict[str, Any]] = {}
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="kms-mutants-") as parent:
        copies = [
            make_copy(root, Path(parent), n) for n in range(max(options.jobs, config.coverage_jobs))
        ]
        for copy_root in copies:
            for path in reprinted:
                (copy_root / path).write_text(sources.unparsed(path), encoding="utf-8")
        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            list(pool.map(warm, [root] * len(copies), copies, [test_files] * len(copies)))
        lines, durations, failed, cached = coverage_map(
            root, copies[: config.coverage_jobs], test_files, reprinted, pytest_options
        )
        coverage_map_ = CoverageMap(
            lines,
            durations,
            texts=functools.cache(lambda file: (root / file).read_text(encoding="utf-8")),
            references=functools.cache(
                lambda path: _references(sources, path, [*reprinted, *modules])
            ),
            mentions=TestSources(root).mentions,
        )
        coverage_minutes = (time.monotonic() - started) / 60
        coverage_cpu = _cpu_minutes()
        if options.coverage_only:
            print(f"coverage run: {coverage_minutes:.1f} min, {len(durations)} tests")
            return 0
        mutant_copies = copies[: options.jobs]
        # pytest's own start (imports, collection) on this machine now: part of every timeout.
        fastest = min(durations, key=durations.__getitem__)
        status, process_start = runner.run(mutant_copies[0], [fastest], timeout=600)
        if status != 0:
            raise SystemExit(f"the unmutated code fails {fastest}: fix that first")
        overhead = process_start
        if options.fork:
            runner.start_servers(mutant_copies)
            status, overhead = runner.run(mutant_copies[0], [fastest], timeout=600)
            if status != 0:
                raise SystemExit(f"the unmutated code fails {fastest} in a fork: fix that first")
        print(
            f"{len(mutants)} mutants in {len(modules)} modules ({len(skipped)} more skipped by "
            f"design); coverage run and baseline {coverage_minutes:.1f} min"
            f"{' (cached)' if cached else ''}; pytest starts in {overhead:.1f}s "
            f"({process_start:.1f}s as a new process)",
            flush=True,
        )
        free: Queue[Path] = Queue()
        for copy_root in mutant_copies:
            free.put(copy_root)
        mutants_started = time.monotonic()
        deadline = started + 60 * options.minutes
        # (module, function) and (module, "") -> the tests that killed their mutants so far
        killers: dict[tuple[str, str], Counter[str]] = {}
        killers_lock = threading.Lock()

        def check(mutant: Mutant) -> dict[str, Any]:
            if time.monotonic() > deadline:
                return {"outcome": "not run"}
            with killers_lock:
                by_function = killers.get((mutant.path, mutant.function), Counter())
                by_module = killers.get((mutant.path, ""), Counter())
                preferred = [n for n, _ in by_function.most_common()]
                preferred += [n for n, _ in by_module.most_common() if n not in by_function]
            selection = coverage_map_.select(
                mutant,
                named[mutant.path],
                options.cap,
                config.import_time_tests_of(mutant.path),
                preferred,
                config.named_cap_seconds,
            )
            if selection is None:
                return {"outcome": "not covered"}
            # A hang fails its test after twice its measured time (kms_mutants.deadlines);
            # this is the backstop for a run that hangs anyway (in a fixture's teardown).
            timeout = 3 * (overhead + selection.seconds) + 30
            copy_root = free.get()
            target = copy_root / mutant.path
            deadlines_file = copy_root / ".mutants-deadlines.json"
            outcome_file = copy_root / ".mutants-outcome.json"
            outcome_file.unlink(missing_ok=True)
            try:
                target.write_text(mutated_source(mutant, sources(mutant.path)), encoding="utf-8")
                limits = {node: allowed(durations.get(node, 1.0)) for node in selection.tests}
                deadlines_file.write_text(json.dumps(limits), encoding="utf-8")
                status, seconds = runner.run(
                    copy_root, selection.tests, timeout, deadlines_file, outcome_file
                )
                failed = {}
                if outcome_file.exists():
                    failed = json.loads(outcome_file.read_text(encoding="utf-8"))
            finally:
                target.write_text(sources.unparsed(mutant.path), encoding="utf-8")
                free.put(copy_root)
            outcome = {None: "timeout", 0: "survived", 1: "killed"}.get(status, f"error {status}")
            if status in (2, 3, 4):
                # Interrupted by collection errors, an internal error, or a conftest that does
                # not import: the unmutated code collected these same tests, so the mutant broke
                # an import. (5, no tests collected, would be the runner's own fault: "error".)
                outcome = "killed"
                failed = {"killed_by": f"(pytest exit {status}: the tests could not be collected)"}
            if failed.get("killed_by"):
                with killers_lock:
                    for key in ((mutant.path, mutant.function), (mutant.path, "")):
                        killers.setdefault(key, Counter())[failed["killed_by"]] += 1
            if outcome == "killed" and failed.get("past_deadline"):
                outcome = "timeout"
            return {
                "outcome": outcome,
                "killed_by": failed.get("killed_by"),
                "ran": len(selection.tests),
                "named": selection.named,
                "covering": selection.covering,
                "capped": len(selection.tests) < selection.covering,
                "seconds": round(seconds, 2),
            }

        # Ctrl-C or SIGTERM stops early and still writes what was found.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        pool = ThreadPoolExecutor(max_workers=options.jobs)
        try:
            for done, (mutant, outcome) in enumerate(
                zip(mutants, pool.map(check, mutants), strict=False), start=1
            ):
                outcomes[mutant] = outcome
                if done % 50 == 0:
                    minutes = (time.monotonic() - mutants_started) / 60
                    print(f"... {done}/{len(mutants)} after {minutes:.1f} min", flush=True)
                if outcome["outcome"] in ("survived", "not covered"):
                    shown = outcome["outcome"]
                    if shown == "survived":
                        shown += f" {outcome['ran']}/{outcome['covering']}"
                    print(f"{shown} {mutant.path}:{mutant.line}: {mutant.description}", flush=True)
        except KeyboardInterrupt:
            interrupted = True
            for server in runner.servers.values():  # stop the runs under way: outcomes dropped
                server.process.send_signal(signal.SIGUSR1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            runner.close()
    finished = time.monotonic()
    # The fork servers and what they forked are reaped by now: their CPU time is counted.
    mutant_cpu = _cpu_minutes() - coverage_cpu
    mutant_minutes = (finished - mutants_started) / 60
    ran = sum(1 for outcome in outcomes.values() if outcome["outcome"] != "not run")
    meta = {
        "started": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git(root, "rev-parse", "--short", "HEAD"),
        "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD"),
        # Only what the run measures: its own reports and the verdicts do not count.
        "dirty": bool(_git(root, "status", "--porcelain", "--", "kms", "tests", "migrations")),
        "interrupted": interrupted,
        "jobs": options.jobs,
        "cores": os.cpu_count() or 0,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "minutes": (finished - started) / 60,
        "coverage_minutes": coverage_minutes,
        "coverage_cached": cached,
        "mutant_minutes": mutant_minutes,
        "coverage_cpu_minutes": coverage_cpu,
        "mutant_cpu_minutes": mutant_cpu,
        "per_minute": ran / mutant_minutes if mutant_minutes else 0.0,
        "cap": options.cap,
        "deadline_minutes": options.minutes,
        "overhead": overhead,
        "samples": {path: share for path, share in samples.items() if share < 1.0},
        "only": bool(options.only),
        "modules": modules,
        "named": named,
        "test_files": len(test_files),
        "tests": len(durations),
        "excluded": config.exclude_tests,
        "failed_in_baseline": failed,
        "postgres": bool(options.postgres_dsn),
    }
    rows = []
    for mutant in [*mutants, *skipped]:
        found = outcomes.get(mutant, {"outcome": "not run"})
        if mutant.skip_reason:
            found = {"outcome": f"skipped: {mutant.skip_reason}"}
        rows.append(
            {
                "path": mutant.path,
                "line": mutant.line,
                "text": mutant.text,
                "function": mutant.function,
                "mutation": mutant.description,
                **{"ran": 0, "named": 0, "covering": 0, "capped": False, "seconds": 0.0},
                **found,
            }
        )
    rows.sort(key=lambda row: (row["path"], row["line"], row["mutation"]))
    results = {"run": meta, "mutants": rows}
    apply_verdicts(results, config, sources)
    json_path, markdown_path = root / options.json, root / options.markdown
    report.write(results, json_path, markdown_path)
    killed, decided = report.score(rows)
    survivors = sum(1 for row in rows if row["outcome"] in report.SURVIVED)
    to_judge = sum(1 for row in rows if row["outcome"] in report.SURVIVED and not row["verdict"])
    print()
    if interrupted:
        print(f"INTERRUPTED: {ran} of {len(mutants)} mutants run")
    print(
        f"{len(mutants)} mutants: {killed} killed of {decided} decided "
        f"({100 * killed / max(decided, 1):.1f}%), {survivors} survivors ({to_judge} to judge), "
        f"{len(mutants) - ran} not run, {len(skipped)} skipped by design; "
        f"{meta['minutes']:.1f} min in all ({meta['per_minute']:.0f} mutants a minute). "
        f"Written: {options.markdown}, {options.json}"
    )
    return 130 if interrupted else 0


def estimate(options: argparse.Namespace, config: Config) -> int:
    """What a run would cost, from the cached coverage run (``--coverage-only`` makes it).

    Per module: the mutants, how many no test executes, and the measured seconds of the tests
    each would meet if it survived (its named tests and the rest up to the cap): an upper bound,
    since a killed mutant stops at its first failing test. ``--calibrate RESULTS`` (the JSON of an
    earlier run, best a ``--sample`` of every module) scales what its mutants took to this run's
    mutants (``calibrate``).
    """
    root = config.root
    sources = Sources(root)
    modules = sorted(options.only) if options.only else config.target_modules()
    modules = [path for path in modules if sources.mutants(path)]
    test_files = config.test_files()
    reprinted = sorted({*config.target_modules(), *modules})
    pytest_options = [f"--postgres-dsn={options.postgres_dsn}"] if options.postgres_dsn else []
    cached = cache_file(root, test_files, reprinted, pytest_options)
    if not cached.exists():
        raise SystemExit("no coverage run of this code yet: python -m kms_mutants --coverage-only")
    saved = json.loads(cached.read_text(encoding="utf-8"))
    lines = {
        path: {int(line): set(contexts) for line, contexts in per_line.items()}
        for path, per_line in saved["lines"].items()
    }
    durations = saved["durations"]
    coverage_map_ = CoverageMap(
        lines,
        durations,
        texts=functools.cache(lambda file: (root / file).read_text(encoding="utf-8")),
        references=functools.cache(lambda path: _references(sources, path, reprinted)),
        mentions=TestSources(root).mentions,
    )
    counts: dict[str, int] = {}
    print("| module | mutants | not covered | bound (core-minutes) |")
    print("|---|---|---|---|")
    total = 0.0
    count = 0
    for path in modules:
        named = config.named_test_files(path, test_files)
        mine = [m for m in sources.mutants(path) if not m.skip_reason]
        mine = [m for m in mine if in_sample(m, sample_share(options, config, path))]
        seconds, uncovered = 0.0, 0
        for mutant in mine:
            selection = coverage_map_.select(
                mutant,
                named,
                options.cap,
                config.import_time_tests_of(path),
                named_cap=config.named_cap_seconds,
            )
            if selection is None:
                uncovered += 1
                continue
            seconds += selection.seconds
        total += seconds
        count += len(mine)
        counts[path] = len(mine)
        print(f"| `{path}` | {len(mine)} | {uncovered} | {seconds / 60:.1f} |")
    print(f"{count} mutants; the bound: {total / 60:.1f} core-minutes of measured test time")
    if options.calibrate:
        calibrate(Path(options.calibrate), counts)
    return 0


def _group(path: str) -> str:
    """A module's folder (kms/api, kms/server...), to average over when a sample has few."""
    return "/".join(path.split("/")[:2]) if path.count("/") > 1 else "kms"


def calibrate(results_file: Path, counts: dict[str, int]) -> None:
    """Mutants per minute times mutant count, module by module: the average wall time a mutant
    of each module took in ``results_file`` (of its folder when the file has fewer than 5 of the
    module's mutants, of all when fewer than 5 of the folder's), times the mutants of that module
    now; the run's wall time and CPU time scale with that sum."""
    results = json.loads(results_file.read_text(encoding="utf-8"))
    run_meta = results["run"]
    rows = [row for row in results["mutants"] if not row["outcome"].startswith("skipped")]
    rows = [row for row in rows if row["outcome"] != "not run"]
    if not rows:
        raise SystemExit(f"{results_file}: no mutant was run")
    spent: dict[str, list[float]] = {}
    for row in rows:
        for key in (row["path"], _group(row["path"]), ""):
            spent.setdefault(key, []).append(row["seconds"])

    def average(path: str) -> float:
        for key in (path, _group(path), ""):
            if len(spent.get(key, [])) >= 5 or key == "":
                return sum(spent[key]) / len(spent[key])
        return 0.0

    sample_seconds = sum(row["seconds"] for row in rows)
    expected = sum(average(path) * count for path, count in counts.items())
    wall = run_meta["mutant_minutes"] * expected / sample_seconds
    print(
        f"calibrated on {len(rows)} mutants of {results_file} ({run_meta['jobs']} jobs, load "
        f"average {run_meta['load_start']:.1f} to {run_meta['load_end']:.1f}): about "
        f"{wall:.0f} minutes of mutants at that load, plus the coverage run "
        f"({run_meta['coverage_minutes']:.1f} min in that run"
        f"{', cached' if run_meta.get('coverage_cached') else ''})"
    )
    cpu = run_meta.get("mutant_cpu_minutes")
    if cpu:
        needed = cpu * expected / sample_seconds
        print(
            f"CPU time of the mutants: about {needed:.0f} minutes, so at least "
            f"{needed / run_meta['cores']:.0f} minutes on {run_meta['cores']} idle cores"
        )


def _references(
    sources: Sources, path: str, measured: list[str]
) -> dict[str, set[tuple[str, int]]]:
    """name -> (module, line) of the code inside a function that reads it: in ``path`` and in the
    ``measured`` modules that import from it (lines of the re-printed modules: coverage's)."""
    dotted = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    found: dict[str, set[tuple[str, int]]] = {}
    for module in dict.fromkeys([path, *measured]):
        if module != path and dotted not in sources(module):
            continue
        for name, lines in names_read_in_functions(sources(module)).items():
            found.setdefault(name, set()).update((module, line) for line in lines)
    return found


def apply_verdicts(results: dict[str, Any], config: Config, sources: Sources) -> None:
    """Give each survivor of ``results`` its verdict, and list the stale and moved verdicts.

    The verdicts are matched against the mutants of every target module and of every module a
    verdict names that still exists, so a line moved to another module keeps its verdict and a
    verdict whose line is gone is reported stale, whatever this run's ``--only``.
    """
    written = verdicts.load(config.root / config.verdicts)
    modules = {*config.target_modules(), *(row["path"] for row in results["mutants"])}
    modules |= {verdict.module for verdict in written if (config.root / verdict.module).exists()}
    current = [mutant for path in sorted(modules) for mutant in sources.mutants(path)]
    resolved = verdicts.resolve(written, current)
    for row in results["mutants"]:
        key = (row["path"], row["text"], row["mutation"], row["function"])
        found = resolved.found.get(key)
        row["verdict"], row["verdict_moved_from"] = found if found else (None, None)
    results["stale_verdicts"] = [
        {"module": v.module, "line": v.line, "mutation": v.mutation, "verdict": v.verdict}
        | ({"in": v.function} if v.function else {})
        for v in resolved.stale
    ]
    results["moved_verdicts"] = [
        {"module": v.module, "line": v.line, "mutation": v.mutation, "now_in": module}
        for v, module in resolved.moved
    ]
