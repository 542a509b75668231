"""Re-apply known bugs, one at a time, and check that the suite catches each.

Each ``scripts/known_bugs/NN-name.patch`` is one small bug that once got past ``make test`` (a
documented promise broken). For each, a copy of the repository gets the patch and the tests
that must notice it run there (with ``PYTHONPATH`` on the copy, so ``kms serve`` and gunicorn run
the bug too). Prints one line per bug; exits 1 if any bug goes unnoticed or no longer applies.
Not part of ``make test``; run with ``python scripts/known_bugs.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CATCHERS: dict[str, list[str]] = {
    "01-decrypted-repr-removed": ["tests/unit/test_secrets_in_memory.py"],
    "02-zeroise-noop": ["tests/unit/test_secrets_in_memory.py"],
    "03-wsgi-close-keeps-keyring": ["tests/service/test_gunicorn_conf.py"],
    "04-hide-parameters-false": ["tests/service/test_store_engine.py"],
    "05-pbkdf2-sha512": ["tests/unit/test_kdf_known_answers.py"],
    "06-tls-minimum-1.0": [
        "tests/service/test_gunicorn_conf.py",
        "tests/http/test_tls.py",
    ],
    "07-default-host-0000": [
        "tests/unit/test_settings.py",
        "tests/service/test_gunicorn_conf.py",
    ],
    "08-max-body-bytes-ignored": ["tests/service/test_app.py"],
    "09-wal-off": ["tests/service/test_store_engine.py"],
    "10-failed-start-exits-3": ["tests/http/test_startup.py"],
    "11-rotation-other-connection": ["tests/service/test_store_engine.py"],
    "12-create-without-key-id-as-any-key": ["tests/service/test_policy_create_rule.py"],
    "13-rotate-skips-locked-row-mac": ["tests/service/test_locked_row_checks.py"],
    "14-recreate-skips-locked-row-mac": ["tests/service/test_locked_row_checks.py"],
    "15-decrypt-ignores-min-version": ["tests/service/test_min_decryption_version.py"],
    "16-pending-deletion-signs": ["tests/service/test_pending_deletion_refusals.py"],
    "17-row-mac-compared-with-equality": ["tests/unit/test_constant_time_comparisons.py"],
    "18-audit-fails-open": ["tests/service/test_audit_fail_closed.py"],
    "19-use-limit-off-by-one": ["tests/service/test_use_limit_boundary.py"],
    "20-no-audit-warning": ["tests/service/test_startup_warnings.py"],
    "21-no-policy-warning": ["tests/service/test_startup_warnings.py"],
}


def make_copy(parent: Path, number: int) -> Path:
    """A copy of the repository without its environment, git or caches."""
    target = parent / f"copy{number}"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".*_cache")
    shutil.copytree(ROOT, target, ignore=ignore)
    return target


def run_tests(copy_root: Path, tests: list[str], timeout: float) -> tuple[bool, float]:
    """Run ``tests`` in ``copy_root`` (first on PYTHONPATH, so child processes run its code too,
    no ``KMS_*`` of the developer's); True when all pass, and the wall time."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
    environ["PYTHONPATH"] = str(copy_root)
    environ["PYTHONDONTWRITEBYTECODE"] = "1"
    started = time.monotonic()
    try:
        result = subprocess.run(  # noqa: S603 - our own interpreter and test paths
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=copy_root,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started
    return result.returncode == 0, time.monotonic() - started


def main() -> int:
    problems = 0
    with tempfile.TemporaryDirectory(prefix="kms-known-bugs-") as parent:
        # The control: without any bug, the same copy passes every catching test.
        every_test = sorted({test for tests in CATCHERS.values() for test in tests})
        passed, seconds = run_tests(make_copy(Path(parent), 0), every_test, timeout=1800)
        print(f"control (no bug): {'passed' if passed else 'FAILED'} ({seconds:.0f}s)", flush=True)
        if not passed:
            return 1
        for name, tests in CATCHERS.items():
            copy_root = make_copy(Path(parent), len(list(Path(parent).iterdir())))
            patch = ROOT / "scripts" / "known_bugs" / f"{name}.patch"
            applied = subprocess.run(  # noqa: S603 - git on our own patch file
                ["git", "apply", str(patch)],  # noqa: S607
                cwd=copy_root,
                capture_output=True,
                text=True,
                check=False,
            )
            if applied.returncode != 0:
                print(f"{name}: the patch no longer applies: {applied.stderr.strip()}")
                problems += 1
                continue
            passed, seconds = run_tests(copy_root, tests, timeout=900)
            print(f"{name}: {'NOT CAUGHT' if passed else 'caught'} ({seconds:.0f}s)", flush=True)
            problems += passed
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
