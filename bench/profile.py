"""``--profile DIR``: where the workers' time goes during a scenario, sampled by py-spy.

py-spy (``pip install py-spy``; not a kms dependency) attaches to each gunicorn worker for the
scenario's warm-up and measured window and writes its samples as collapsed stacks
(``DIR/<database>-<scenario>-<pid>.txt``, one ``frame;frame;... count`` line per stack; open them
in speedscope or flamegraph.pl). ``summary`` prints the functions that hold the most samples, by
their own time and with what they call, so encrypt and the baseline can be compared side by side.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.load import BenchError

SAMPLES_PER_SECOND = 250
#: A frame as py-spy writes it: ``function (path/to/file.py:line)``.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str:
    found = Path(sys.executable).with_name("py-spy")
    command = str(found) if found.is_file() else shutil.which("py-spy")
    if command is None:
        raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
    return command


@contextmanager
def profiling(directory: Path, label: str, pids: list[int], seconds: float) -> Iterator[None]:
    """Sample every pid for ``seconds`` while the body runs the load."""
    directory.mkdir(parents=True, exist_ok=True)
    command = py_spy()
    samplers = [
        subprocess.Popen(  # noqa: S603 - py-spy with our own arguments
            [
                command,
                "record",
                "--nonblocking",
                "--threads",
                # Only the thread holding the GIL: on 2 cores the Python work is what competes;
                # threads waiting on a queue, a lock or the GIL are left out.
                "--gil",
                "--format",
                "raw",
                "--rate",
                str(SAMPLES_PER_SECOND),
                "--duration",
                str(max(1, round(seconds))),
                "--pid",
                str(pid),
                "--output",
                str(directory / f"{label}-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    try:
        yield
    finally:
        for sampler in samplers:
            sampler.wait(timeout=seconds + 60)


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rpartition(" ")
    names = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame)
        if match is None:
            names.append(frame)
            continue
        path = match.group("file")
        short = "/".join(path.split("/")[-2:])
        names.append(f"{match.group('function')} ({short})")
    return names, int(count)


def summary(directory: Path, label: str, top: int = 12) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for path in sorted(directory.glob(f"{label}-*.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            names, count = _frames(line)
            # Idle threads wait in the thread pool or the event loop: not request work.
            if any(
                marker in name
                for name in names[-3:]
                for marker in (
                    "select (selectors.py)",
                    "wait (threading.py)",
                    "_worker (thread.py)",
                )
            ):
                continue
            total += count
            own[names[-1]] += count
            for name in set(names):
                inclusive[name] += count
    if not total:
        return f"{label}: no samples"
    lines = [f"{label}: {total} samples holding the GIL"]
    lines.append("  own time:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("  with callees (kms and Flask/Werkzeug/gunicorn frames):")
    interesting = [
        (name, n)
        for name, n in inclusive.most_common()
        if any(
            part in name for part in ("kms/", "api/", "service/", "store/", "server/", "crypto/")
        )
        or any(part in name for part in ("flask/", "werkzeug/", "gunicorn/", "sqlalchemy/"))
    ]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in interesting[:top]]
    return "\n".join(lines)
