"""What a test needs from the machine.

A test that needs something the machine lacks (PostgreSQL, a command such as openssl, newman,
the git history of an earlier release) is skipped on a developer's machine, and the skip is
reported (-ra). In CI it fails instead: `.ci/run` installs all of it, so a missing piece there
is a broken CI machine, and a skip would let the suite shrink without anyone noticing. CI is
the one variable of the environment the tests read: it changes what a missing tool means,
never what a test does.
"""

from __future__ import annotations

import os
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
