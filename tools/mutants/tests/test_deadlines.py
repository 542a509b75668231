"""A test past its deadline fails quickly, even one that swallows exceptions."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HANGING = """
import time


def test_hangs():
    while True:
        try:
            time.sleep(60)
        except Exception:
            pass


def test_quick():
    pass
"""


def test_a_hanging_test_fails_at_its_deadline(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text(HANGING, encoding="utf-8")
    deadlines = tmp_path / "deadlines.json"
    deadlines.write_text(json.dumps({"test_hang.py::test_hangs": 1.0}), encoding="utf-8")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + ["-p", "kms_mutants.deadlines", f"--mutants-deadlines={deadlines}"]
        + [f"--mutants-outcome={tmp_path / 'outcome.json'}", "test_hang.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed" in result.stdout
    assert time.monotonic() - started < 30
    outcome = json.loads((tmp_path / "outcome.json").read_text(encoding="utf-8"))
    assert outcome == {"killed_by": "test_hang.py::test_hangs", "past_deadline": True}
