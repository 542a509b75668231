"""The wheel holds every package of kms: pyproject.toml lists them one by one, so a new
subpackage that is not listed would work in the editable install of `make test` and be missing
from `pip install .` (the container, a production virtualenv)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_every_package_under_kms_is_in_the_wheel() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "kms").rglob("__init__.py")
    }
    assert found
    assert found <= listed, sorted(found - listed)
