"""The coverage run: which test executes which line of kms, and how long each test takes.

One run of the configured test files under coverage.py, one coverage context per test
(``kms_mutants.pytest_plugin``), child processes measured too (``patch = subprocess``) and given
the running test's context (``kms_mutants.child_site``), the files shared out among the copies
(one coverage process each). It is also the baseline: the unmutated (re-printed) code must pass
it. It is cached in .mutants-cache/ by the code, the tests, the modules re-printed and the pytest
options, so a rerun (``--only``, a report) on the same code skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kms_mutants import child_site
from kms_mutants.copies import environ

Lines = dict[str, dict[int, set[str]]]


def measure(
    root: Path, copy_root: Path, files: list[str], pytest_options: list[str]
) -> tuple[Lines, dict[str, float], list[str]]:
    """Run the test ``files`` once under coverage.py, one context per test, in ``copy_root``."""
    data_file = copy_root / ".mutants-coverage"
    durations_file = copy_root / ".mutants-durations.json"
    rcfile = copy_root / ".mutants-coveragerc"
    rcfile.write_text(
        "[run]\n"
        f"data_file = {data_file}\n"
        "parallel = true\n"
        f"include = {copy_root}/kms/*\n"
        "patch = subprocess\n    fork\n    _exit\n",
        encoding="utf-8",
    )
    context_file = copy_root / ".mutants-context"
    site = copy_root / ".mutants-site"
    site.mkdir(exist_ok=True)
    shutil.copy(child_site.__file__, site / "sitecustomize.py")
    env = environ(
        root,
        copy_root,
        PYTHONPATH=os.pathsep.join(map(str, [copy_root, site])),
        MUTANTS_DURATIONS=str(durations_file),
        MUTANTS_CONTEXT_FILE=str(context_file),
    )
    command = [sys.executable, "-m", "coverage", "run", f"--rcfile={rcfile}", "-m", "pytest"]
    command += ["-q", "-p", "no:cacheprovider", "-p", "kms_mutants.pytest_plugin"]
    command += [*pytest_options, *files]
    result = subprocess.run(  # noqa: S603 - our own interpreter and test paths
        command, cwd=copy_root, env=env, capture_output=True, text=True, check=False
    )
    # 1: some tests failed (the others ran); anything else: the run itself went wrong.
    if result.returncode not in (0, 1) or not durations_file.exists():
        print(result.stdout[-4000:], result.stderr[-2000:], sep="\n")
        raise SystemExit("the coverage run of the unmutated code failed: fix that first")
    subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "coverage", "combine", "-q", f"--rcfile={rcfile}"],
        cwd=copy_root,
        env=env,
        check=True,
    )
    from coverage import CoverageData

    data = CoverageData(basename=str(data_file))
    data.read()
    lines: Lines = {}
    for measured in data.measured_files():
        per_line = lines.setdefault(os.path.relpath(measured, copy_root), {})
        for line, contexts in data.contexts_by_lineno(measured).items():
            per_line.setdefault(line, set()).update(contexts)
    measured_run = json.loads(durations_file.read_text(encoding="utf-8"))
    durations: dict[str, float] = measured_run["durations"]
    # A test that fails on the unmutated code (a timing test on a loaded machine) cannot tell a
    # mutant from it: it is left out of every selection, and the report names it.
    for node in measured_run["failed"]:
        durations.pop(node, None)
        for per_line in lines.values():
            for contexts in per_line.values():
                contexts.discard(node)
    for per_line in lines.values():  # the static context of the run ("" before the first test)
        for contexts in per_line.values():
            if any(not context for context in contexts):
                contexts.discard("")
                contexts.add("")
    for name in (data_file, durations_file, rcfile, context_file):
        name.unlink(missing_ok=True)
    shutil.rmtree(site)
    return lines, durations, measured_run["failed"]


def cache_file(root: Path, files: list[str], reprinted: list[str], options: list[str]) -> Path:
    """Where the coverage map of this code, these tests and these options is kept.

    The name hashes every source and test file, the test files run, the modules re-printed and
    the pytest options: any change means a new coverage run (which is also the baseline).
    """
    digest = hashlib.sha256(json.dumps([files, sorted(reprinted), options]).encode())
    for name in sorted([*root.glob("kms/**/*.py"), *root.glob("tests/**/*.py")]):
        digest.update(name.relative_to(root).as_posix().encode() + b"\0" + name.read_bytes())
    return root / ".mutants-cache" / f"coverage-{digest.hexdigest()[:16]}.json"


def coverage_map(
    root: Path, copies: list[Path], files: list[str], reprinted: list[str], options: list[str]
) -> tuple[Lines, dict[str, float], list[str], bool]:
    """The lines and durations from an earlier run on the same code, or a new coverage run;
    the tests that failed on the unmutated code; and whether it came from the cache.

    A new run shares the test ``files`` out among the ``copies``, one coverage process each (the
    longest files first, each to the copy with the least so far, by the durations of the latest
    cached map), and merges what they measured.
    """
    cached = cache_file(root, files, reprinted, options)
    if cached.exists():
        saved = json.loads(cached.read_text(encoding="utf-8"))
        lines = {
            path: {int(line): set(contexts) for line, contexts in per_line.items()}
            for path, per_line in saved["lines"].items()
        }
        return lines, saved["durations"], saved.get("failed", []), True
    earlier: dict[str, float] = {}
    for older in sorted(cached.parent.glob("coverage-*.json"), key=lambda p: p.stat().st_mtime):
        earlier = {}
        for node, seconds in json.loads(older.read_text(encoding="utf-8"))["durations"].items():
            earlier[node.split("::")[0]] = earlier.get(node.split("::")[0], 0.0) + seconds
    shares: list[list[str]] = [[] for _ in copies]
    loads = [0.0] * len(copies)
    for file in sorted(files, key=lambda file: -earlier.get(file, 1.0)):
        least = loads.index(min(loads))
        shares[least].append(file)
        loads[least] += earlier.get(file, 1.0)
    with ThreadPoolExecutor(max_workers=len(copies)) as pool:
        running = [
            pool.submit(measure, root, copy_root, sorted(share), options)
            for copy_root, share in zip(copies, shares, strict=True)
            if share
        ]
        parts = [part.result() for part in running]
    lines: Lines = {}
    durations: dict[str, float] = {}
    failed: list[str] = []
    for part_lines, part_durations, part_failed in parts:
        for path, per_line in part_lines.items():
            for line, contexts in per_line.items():
                lines.setdefault(path, {}).setdefault(line, set()).update(contexts)
        durations.update(part_durations)
        failed += part_failed
    if len(failed) > max(5, len(durations) // 50):
        raise SystemExit(f"{len(failed)} tests fail on the unmutated code: fix that first")
    cached.parent.mkdir(exist_ok=True)
    saved_lines = {
        path: {line: sorted(contexts) for line, contexts in per_line.items()}
        for path, per_line in lines.items()
    }
    saved = {"lines": saved_lines, "durations": durations, "failed": sorted(failed)}
    cached.write_text(json.dumps(saved), encoding="utf-8")
    return lines, durations, sorted(failed), False
