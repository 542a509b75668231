"""docs/settings.md: made from the declarations in kms/settings.py, and kept current."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from kms.cli import main
from kms.settings import DECLARATIONS, load_settings, settings_table

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "settings.md"


def test_docs_settings_md_is_current() -> None:
    assert DOC.is_file(), "docs/settings.md is missing: run `make settings-doc`"
    assert DOC.read_text(encoding="utf-8") == settings_table(), (
        "docs/settings.md is stale: run `make settings-doc` and commit it"
    )


def test_kms_settings_table_writes_what_make_settings_doc_commits(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["settings-table", "--output", str(tmp_path / "s.md")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.md").read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "kms settings-table --output docs/settings.md" in makefile


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(number for number, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_every_setting_has_a_row_with_its_variable_and_every_old_spelling_is_listed() -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = table_rows(text, "| Key |")
    assert [(row[0], row[1]) for row in rows] == [
        (f"`{d.key}`", f"`{d.variable}`") for d in DECLARATIONS.values()
    ]
    renamed = table_rows(text, "| Deprecated key |")
    assert renamed == [
        [f"`{alias}`", f"`{d.key}`"] for d in DECLARATIONS.values() for alias in d.aliases
    ]


def test_the_documented_defaults_are_what_a_file_with_only_the_database_gets(
    tmp_path: Path,
) -> None:
    path = tmp_path / "minimal.yaml"
    path.write_text("database:\n  dsn: kms.db\n", encoding="utf-8")
    settings = load_settings(path, environ={})
    by_key = {d.key: d for d in DECLARATIONS.values()}
    rows = table_rows(DOC.read_text(encoding="utf-8"), "| Key |")
    checked = 0
    for key, _variable, default, *_ in rows:
        declaration = by_key[key.strip("`")]
        if default == "required":
            assert declaration.attribute == "database_dsn"
            continue
        expected = None if default == "unset" else yaml.safe_load(default.strip("`"))
        assert getattr(settings, declaration.attribute) == expected, key
        checked += 1
    assert checked == len(DECLARATIONS) - 1
