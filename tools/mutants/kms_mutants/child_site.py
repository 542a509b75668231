"""Test contexts in child processes for the mutation runner's coverage run.

Copied by the runner into each copy as ``.mutants-site/sitecustomize.py`` and put on the
PYTHONPATH of the coverage run only. coverage.py follows child processes (``patch = subprocess``
starts it in every Python process a test starts, through its ``.pth`` file, before this module is
imported), but a child records no test context: ``kms serve``, gunicorn's master and workers, the
``kms`` commands would execute their lines under the empty context, and the runner would have to
give each such line every test that uses the module. Here a child reads the current test's node
id from ``MUTANTS_CONTEXT_FILE`` (written by ``kms_mutants.pytest_plugin`` before each test's setup)
at start and then every ``POLL_SECONDS`` in a daemon thread (started again in a forked child, such
as a gunicorn worker), and switches coverage's context to it: a session-wide server's lines count
for the test whose requests ran them. A line run in the last moments of a test may count for the
next one instead: that can only leave a test out of a mutant's selection (a survivor the report
lists), never count a mutant as killed.
"""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.02


def _current() -> str:
    try:
        with open(os.environ["MUTANTS_CONTEXT_FILE"], encoding="utf-8") as source:
            return source.read().strip()
    except OSError:
        return ""


def _follow(coverage: object, start: str) -> None:
    seen = start
    while True:
        time.sleep(POLL_SECONDS)
        context = _current()
        if context and context != seen:
            try:
                coverage.switch_context(context)  # type: ignore[attr-defined]
                seen = context
            except Exception:  # noqa: S112 - a race with the tracer: try again at the next poll
                continue


def _start() -> None:
    if "MUTANTS_CONTEXT_FILE" not in os.environ:
        return
    import coverage

    current = coverage.Coverage.current()
    if current is None:
        return
    context = _current()
    if context:
        current.switch_context(context)
    threading.Thread(target=_follow, args=(current, context), daemon=True).start()


_start()
os.register_at_fork(after_in_child=_start)
