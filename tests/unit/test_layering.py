"""Dependencies point one way: api -> service -> {store, crypto}, and server knows no api.
Checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
WEB = {"flask", "werkzeug", "marshmallow", "gunicorn"}
DATABASE = {"sqlalchemy", "alembic", "psycopg", "sqlite3"}

FORBIDDEN: dict[str, set[str]] = {
    "kms/crypto": WEB | DATABASE | {"kms.api", "kms.service", "kms.store", "kms.settings"},
    "kms/store": WEB | {"kms.api", "kms.service"},
    "kms/service": WEB | {"kms.api"},
    # The serving machinery runs whatever WSGI app it is given: it knows no view and no factory.
    "kms/server": {"kms.api", "kms.app"},
    # The client runs on other machines: nothing of the server side.
    "kms/client": WEB
    | DATABASE
    | {"kms.api", "kms.service", "kms.store", "kms.settings", "kms.app", "kms.errors"},
}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def violations(module: str, forbidden: set[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in forbidden)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_layer_imports_nothing_from_a_higher_one(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))  # sub-packages too
    assert files
    found = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in files
        for module in imported_modules(path)
        if violations(module, FORBIDDEN[package])
    }
    assert not found


def test_errors_import_nothing_from_kms() -> None:
    modules = imported_modules(ROOT / "kms" / "errors.py")
    assert not {module for module in modules if module.split(".")[0] == "kms"}


def test_migrations_take_only_the_table_metadata_from_kms() -> None:
    modules = imported_modules(ROOT / "migrations" / "env.py")
    assert {module for module in modules if module.split(".")[0] == "kms"} == {"kms.store.models"}


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from flask import request\nimport sqlalchemy.orm\n")
    assert {m for m in imported_modules(sample) if violations(m, WEB | DATABASE)} == {
        "flask",
        "sqlalchemy.orm",
    }
