"""An earlier release of kms, taken from git history, to make the databases the upgrade tests
start from with that release's own code (tests/system/test_upgrade*.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from kms.settings import Settings
from tests.helpers.machine import unavailable

REPOSITORY = Path(__file__).resolve().parents[2]


def extract_release(commit: str, target: Path) -> Path:
    """``commit``'s ``kms`` package, with its migrations, in ``target``. Where git or the commit
    is missing (a shallow clone, an exported tree) the test is skipped, or fails in CI, whose
    `.ci/run` fetches the whole history of a shallow clone."""
    if shutil.which("git") is None:
        unavailable("git is needed to extract the previous release")
    known = subprocess.run(
        ["git", "-C", str(REPOSITORY), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if known.returncode != 0:
        unavailable(
            f"this checkout does not hold commit {commit} (a shallow clone? git fetch --unshallow)"
        )
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", known.stdout.strip(), "kms", "migrations"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    # Installed, `migrations/` is the package kms.migrations (pyproject's package-dir).
    (target / "migrations").rename(target / "kms" / "migrations")
    return target


def run_in_release(release: Path, script: str, settings: Settings, iterations: int) -> Any:
    """Run ``script`` with the old release's code (its arguments: the release, the database,
    the passphrase file, the KDF iterations) and return the JSON it prints."""
    assert settings.master_passphrase_file is not None
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(release),
            settings.database_dsn,
            str(settings.master_passphrase_file),
            str(iterations),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=release,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
