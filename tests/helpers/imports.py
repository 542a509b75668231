"""What importing a module costs a fresh process: which heavy modules come with it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable


def imported_with(modules: str, watched: Iterable[str]) -> list[str]:
    """Which of ``watched`` (dotted names) a new interpreter has loaded once it ran
    ``import <modules>``: a test here would see what earlier tests happened to import."""
    code = (
        f"import sys, {modules}; "
        f"print('\\n'.join(sorted(m for m in {sorted(watched)!r} if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return result.stdout.split()
