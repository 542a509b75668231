"""Copies of the project where mutants run, and the pytest runs in them.

Each mutant is written into a copy of the repository and the tests run with ``PYTHONPATH``
pointing at that copy, so ``kms serve``, gunicorn and every other child process run the mutant
too (why not mutmut: its trampolines exist only inside the pytest process). The copies hold no
``.git``: their processes get ``GIT_DIR`` (the repository's, read only), so the upgrade tests,
which extract the previous release from git history, run in them.

No new pytest process per mutant (2-3 s of imports before any test runs): each copy has a fork
server (``kms_mutants.fork_server``) that has imported pytest and the third-party modules once,
and forks a pytest per mutant after the mutant is written into the copy (about 0.3 s to the first
test). kms and the tests are imported only in the fork, so it runs the mutant, as do the
processes it starts. ``--no-fork`` goes back to a new process per mutant (same outcomes, slower).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: Not copied, at any depth: the environment, git, caches.
IGNORED = (".venv", ".git", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis", "node_modules")
#: Not copied from the root only: this tool, what the runs leave, the developer's dev secrets.
IGNORED_AT_ROOT = {"tools", ".mutants-cache", "secrets", "data"}

MODULES_FILE = ".mutants-modules"


def make_copy(root: Path, parent: Path, number: int) -> Path:
    target = parent / f"copy{number}"
    anywhere = shutil.ignore_patterns(*IGNORED)

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = set(anywhere(directory, names))
        if Path(directory) == root:
            ignored |= IGNORED_AT_ROOT & set(names)
        return ignored

    shutil.copytree(root, target, ignore=ignore)
    return target


@functools.cache
def _git_dir(root: Path) -> str | None:
    """The repository's git directory (a worktree's common one), or None outside git."""
    command = ["git", "-C", str(root), "rev-parse", "--path-format=absolute", "--git-common-dir"]
    found = subprocess.run(  # noqa: S603 - git on our own repository
        command, capture_output=True, text=True, check=False
    )
    return found.stdout.strip() if found.returncode == 0 else None


def environ(root: Path, copy_root: Path, **extra: str) -> dict[str, str]:
    """The environment of a run in ``copy_root``: no ``KMS_*`` of the developer's, the copy first
    on the path, no pycs written, and git pointed at ``root``'s history."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
    # tests/helpers/old_release.py extracts the previous release with `git rev-parse` and
    # `git archive` (read only), so they read the repository's history; the copy is the work
    # tree (nothing there runs a command that reads or writes it).
    git_dir = _git_dir(root)
    if git_dir is not None:
        env["GIT_DIR"] = git_dir
        env["GIT_WORK_TREE"] = str(copy_root)
    env["PYTHONPATH"] = str(copy_root)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


class ForkServer:
    """``kms_mutants.fork_server`` started in one copy: runs pytest there in a fork per request."""

    def __init__(self, root: Path, copy_root: Path) -> None:
        command = [sys.executable, "-m", "kms_mutants.fork_server", str(copy_root / MODULES_FILE)]
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command,
            cwd=copy_root,
            env=environ(root, copy_root),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._answer()
        self.preloaded = int(ready["preloaded"])

    def _answer(self) -> dict:
        assert self.process.stdout is not None  # noqa: S101 - set by Popen above
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server stopped (status {self.process.wait()})")
        return json.loads(line)

    def run(self, args: list[str], timeout: float) -> tuple[int | None, float]:
        """pytest's exit status (None after a timeout) and the wall time of the run."""
        assert self.process.stdin is not None  # noqa: S101 - set by Popen above
        self.process.stdin.write(json.dumps({"args": args, "timeout": timeout}) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        return answer["status"], float(answer["seconds"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Runner:
    """Runs pytest in the copies, through their fork servers when started."""

    def __init__(self, root: Path, pytest_options: list[str]) -> None:
        self.root = root
        self.pytest_options = pytest_options
        self.servers: dict[Path, ForkServer] = {}

    def start_servers(self, copies: list[Path]) -> None:
        for copy_root in copies:
            self.servers[copy_root] = ForkServer(self.root, copy_root)

    def close(self) -> None:
        for server in self.servers.values():
            server.close()

    def run(
        self,
        copy_root: Path,
        tests: list[str],
        timeout: float,
        deadlines: Path | None = None,
        outcome: Path | None = None,
    ) -> tuple[int | None, float]:
        """Run ``tests`` (node ids, in this order, ``-x``) in ``copy_root``: pytest's exit status
        (0 all passed, 1 one failed, others: pytest could not run them; None when the run timed
        out) and the wall time. ``deadlines``
        names each test's own deadline, ``outcome`` gets the first test that failed
        (``kms_mutants.deadlines``)."""
        args = ["-x", "-q", "-p", "no:cacheprovider", *self.pytest_options]
        if deadlines is not None and outcome is not None:
            args += ["-p", "kms_mutants.deadlines", f"--mutants-deadlines={deadlines}"]
            args += [f"--mutants-outcome={outcome}"]
        args += tests
        server = self.servers.get(copy_root)
        if server is not None:
            return server.run(args, timeout)
        started = time.monotonic()
        try:
            result = subprocess.run(  # noqa: S603 - our own interpreter and test paths
                [sys.executable, "-m", "pytest", *args],
                cwd=copy_root,
                env=environ(self.root, copy_root),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - started
        return result.returncode, time.monotonic() - started


def warm(root: Path, copy_root: Path, tests: list[str]) -> None:
    """Compile the copy once, so each mutant's run compiles only the module it changes.

    pytest's rewritten test modules are cached by a collection without PYTHONDONTWRITEBYTECODE;
    kms's modules then get *checked-hash* pycs: the interpreter compares each source with the hash
    in its pyc, so a mutant written in the same second as the original (same size, same mtime)
    still runs as the mutant (a timestamp pyc could hide it). The runs write no pycs.

    The collection also lists, in ``MODULES_FILE``, the modules from outside the copy that it
    imported: the fork server imports them before its first fork.
    """
    env = environ(root, copy_root, MUTANTS_MODULES=str(copy_root / MODULES_FILE))
    del env["PYTHONDONTWRITEBYTECODE"]
    command = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider"]
    subprocess.run(  # noqa: S603 - our own interpreter and test paths
        [*command, "-p", "kms_mutants.pytest_plugin", *tests],
        cwd=copy_root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "compileall", "-q", "-f", "--invalidation-mode", "checked-hash"]
        + [str(copy_root / "kms"), str(copy_root / "migrations")],
        cwd=copy_root,
        stdout=subprocess.DEVNULL,
        check=True,
    )
