"""Fork server for the mutation runner: one per copy of the repository, one fork per mutant.

A new ``python -m pytest`` costs 2-3 s before any test runs (3.3 s under load), mostly importing
pytest, its plugins, flask, sqlalchemy, cryptography, hypothesis and the rest. This process imports
those once and then, for each request, forks: the child runs ``pytest.main`` on the tests asked
for and exits with pytest's status, as ``python -m pytest`` would. The copy's code (kms, the
tests, their conftest) is never imported here, only in the child, after the runner has written
the mutant into the copy: so each child runs the mutant, and the processes it starts (``kms
serve``, gunicorn) run it too, since they inherit PYTHONPATH and the working directory (the copy).

Fork is safe because nothing here starts a thread or opens a connection before the fork; both are
checked before the first request, as is that no module of the copy has been imported.

Started by the runner as ``python -m kms_mutants.fork_server MODULES_FILE`` with the working
directory, PYTHONPATH and environment a pytest run in that copy gets. MODULES_FILE lists the
modules to import first, one a line (the third-party modules a collection of the tests imported;
those that fail to import are left to the child). Protocol, one JSON object a line: the runner
writes ``{"args": [...pytest arguments...], "timeout": seconds}`` on stdin; this process answers
``{"status": exit status or null, "seconds": wall time, "timed_out": bool}`` on stdout. A run
past its timeout gets SIGINT (pytest then tears its fixtures down, stopping servers), then after
a grace period SIGKILL for its whole process group; so does the run under way when the runner
sends SIGUSR1 (it was interrupted and wants no more answers than "stopped"). EOF on stdin ends
the server.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

#: After SIGINT, how long a timed-out run gets to tear its fixtures down before SIGKILL.
GRACE_SECONDS = 15.0


class _Stopped(Exception):
    """SIGUSR1 came while a run was under way: the runner was interrupted."""


_waiting = False


def _stop(signum: int, frame: object) -> None:
    if _waiting:
        raise _Stopped


def preload(names: list[str], copy_root: Path) -> int:
    """Import ``names`` (third-party modules); return how many imported. Refuse copy modules."""
    imported = 0
    for name in names:
        if name.split(".")[0] in ("kms", "tests", "conftest", "__main__", "__mp_main__"):
            continue
        try:
            importlib.import_module(name)
            imported += 1
        except Exception:  # noqa: S112 - optional or platform modules: the child imports its own
            continue
    ours = [
        name
        for name, module in list(sys.modules.items())
        if name not in ("__main__", "__mp_main__")  # this script
        and Path(getattr(module, "__file__", None) or "/").resolve().is_relative_to(copy_root)
    ]
    # Fork copies memory, not threads: a thread here would be missing (its locks held) in every
    # child; and a kms module imported here would be the unmutated one in every child.
    if "kms" in sys.modules or ours:
        raise SystemExit(f"fork_server: copy modules imported before the fork: {ours}")
    if threading.active_count() != 1:
        threads = threading.enumerate()
        raise SystemExit(f"fork_server: threads started before the fork: {threads}")
    return imported


def run_child(args: list[str]) -> int:
    """In the forked child: run pytest as ``python -m pytest`` would; return its status."""
    os.setpgid(0, 0)  # a group of its own, so a timeout can end the servers it started too
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the protocol pipes are the parent's; the tests' output goes nowhere
        os.dup2(devnull, fd)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    import pytest

    return int(pytest.main(args))


def wait(pid: int, timeout: float) -> tuple[int | None, bool]:
    """Wait for the child; return (exit status or None, timed out)."""
    global _waiting
    pidfd = os.pidfd_open(pid)
    try:
        _waiting = True
        try:
            timed_out = not select.select([pidfd], [], [], timeout)[0]
        except _Stopped:
            timed_out = True
        finally:
            _waiting = False
        if timed_out:
            try:
                os.kill(pid, signal.SIGINT)
                if not select.select([pidfd], [], [], GRACE_SECONDS)[0]:
                    os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    # What the run left in its group: servers it started that a mutant kept from stopping.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return (None if timed_out else os.waitstatus_to_exitcode(status)), timed_out


def serve() -> int:
    """The request loop; returns in a forked child too, with the child's exit status."""
    copy_root = Path.cwd().resolve()
    # As ``python -m pytest`` started in the copy: its directory first, then PYTHONPATH.
    sys.path[0] = str(copy_root)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the runner, which ends us
    signal.signal(signal.SIGUSR1, _stop)
    modules_file = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    names = modules_file.read_text(encoding="utf-8").split() if modules_file else []
    imported = preload(names, copy_root)
    # What was imported lives as long as the server: out of the collector's sight, each child's
    # gc.collect() (pytest runs several at its end) walks only what the child made.
    gc.freeze()
    sys.stdout.write(json.dumps({"ready": True, "preloaded": imported}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            return run_child(request["args"])
        status, timed_out = wait(pid, float(request["timeout"]))
        answer = {"status": status, "seconds": time.monotonic() - started, "timed_out": timed_out}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    # The child leaves through here too, so it exits as a pytest process would: non-daemon threads
    # joined, atexit handlers run (pytest's removal of its temporary directory locks).
    sys.exit(serve())
