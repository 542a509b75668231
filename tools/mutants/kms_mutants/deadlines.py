"""pytest plugin for the mutants' runs (``-p kms_mutants.deadlines``): a test that hangs fails.

A mutant that makes a request hang (a socket never shut down, a lock never released) would hold
its whole run until the runner's timeout (3 times its tests' measured time plus 30 s). Here each
test gets its own deadline instead, from the coverage run: twice its measured time (setup, call
and teardown, measured under coverage, which is slower than this run) plus ``SLACK_SECONDS``. A
test past it fails (``SIGALRM`` in the main thread, where pytest runs the test, raises there), so
``-x`` ends the run and the mutant is killed, seconds after the hang instead of a minute.

The deadlines come from the JSON file named by ``--mutants-deadlines`` (node id -> seconds); a
test it does not name gets ``DEFAULT_SECONDS``. The first test that fails, and whether it was past
its deadline, go to the JSON file named by ``--mutants-outcome``: the report's "killed by".
"""

from __future__ import annotations

import json
import signal
from collections.abc import Generator
from types import FrameType

import pytest

SLACK_SECONDS = 10.0
DEFAULT_SECONDS = 60.0

_deadlines: dict[str, float] = {}
_outcome: dict[str, str | None] = {}


def deadline(measured: float) -> float:
    return 3 * measured + SLACK_SECONDS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--mutants-deadlines", help="JSON: node id -> seconds a test may take")
    parser.addoption("--mutants-outcome", help="JSON: where the first failing test goes")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--mutants-deadlines")
    if path:
        with open(path, encoding="utf-8") as source:
            _deadlines.update(json.load(source))
    _outcome["file"] = config.getoption("--mutants-outcome")


class _TimedOut(BaseException):
    """Not an ``Exception``: a test's ``except Exception`` around a wait must not swallow it."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _TimedOut


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    seconds = _deadlines.get(item.nodeid, DEFAULT_SECONDS)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 5.0)  # again every 5 s, should one be lost
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = _outcome.get("file")
    if report.failed and path and "killed_by" not in _outcome:
        _outcome["killed_by"] = report.nodeid
        hang = report.longrepr is not None and "_TimedOut" in str(report.longrepr)
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"killed_by": report.nodeid, "past_deadline": hang}, out)
