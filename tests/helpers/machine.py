"""What a test needs from the machine.

A test that needs something the machine lacks (PostgreSQL, a command such as openssl, newman,
the git history of an earlier release) is skipped on a developer's machine, and the skip is
reported (-ra). In CI it fails instead: `.ci/run` installs all of it, so a missing piece there
is a broken CI machine, and a skip would let the suite shrink without anyone noticing. CI is
the one variable of the environment the tests read: it changes what a missing tool means,
never what a test does.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when the CI variable says so: ``true`` (as CI services and `.ci/run` set it), ``1``
    or ``yes``."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for want of ``reason``, or fail it in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: .ci/run provides it there)", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``directory``; skips the test where the machine refuses to mount."""
    directory.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def remount_read_only(directory: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Fill the file system of ``directory`` and give back ``leave_bytes``."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("ab", buffering=0) as output:
        while True:
            output.write(b"\0" * 4096)
    if leave_bytes:
        os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))
    return filler
