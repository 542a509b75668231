"""pytest plugin for the mutation runner's coverage run (``-p kms_mutants.pytest_plugin``).

Records, under coverage.py, which test executed which line: the dynamic context is switched to the
test's node id before its setup, so fixture code counts for the first test that needs it. Each
test's duration (setup + call + teardown) goes to the JSON file named by ``MUTANTS_DURATIONS``, so
the runner can order a mutant's tests and bound its run time, with the tests that failed. The node
id also goes to the file named by ``MUTANTS_CONTEXT_FILE``, where child processes read it
(``kms_mutants.child_site``).

With ``MUTANTS_MODULES`` set (the runner's collection of each copy), the names of the modules the
session imported from outside the copy go to that file: what the fork server
(``kms_mutants.fork_server``) imports once, before it forks a pytest for each mutant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import coverage
import pytest

_durations: dict[str, float] = {}
_failed: set[str] = set()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    current = coverage.Coverage.current()
    if current is not None:
        current.switch_context(item.nodeid)
    # For the child processes this test starts or talks to (kms_mutants.child_site).
    context_file = os.environ.get("MUTANTS_CONTEXT_FILE")
    if context_file:
        staged = f"{context_file}.new"
        Path(staged).write_text(item.nodeid, encoding="utf-8")
        os.replace(staged, context_file)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    if report.failed:
        _failed.add(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: Any) -> None:
    target = os.environ.get("MUTANTS_DURATIONS")
    if target:
        with open(target, "w", encoding="utf-8") as out:
            json.dump({"durations": _durations, "failed": sorted(_failed)}, out)
    modules = os.environ.get("MUTANTS_MODULES")
    if modules:
        copy_root = Path.cwd().resolve()
        ours = ("kms", "tests", "conftest", "__main__", "kms_mutants")
        outside = sorted(
            name
            for name, module in list(sys.modules.items())
            if name.split(".")[0] not in ours and not _inside(module, copy_root)
        )
        Path(modules).write_text("\n".join(outside) + "\n", encoding="utf-8")


def _inside(module: object, root: Path) -> bool:
    return Path(getattr(module, "__file__", None) or "/").resolve().is_relative_to(root)
