"""The documents as a whole: the README stays short, every link between the documents resolves,
and the settings table of docs/configuration.md states the defaults the loader really has."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from kms.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")]
    + list((ROOT / "deploy").glob("**/README.md"))
)
#: ``[text](target)``, where target is a relative path, an anchor, or both.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: Path) -> list[str]:
    """The lines of a Markdown file outside its fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces to
    hyphens, and ``-1``, ``-2``... on repeats."""
    seen: Counter[str] = Counter()
    found = set()
    for line in prose(path):
        heading = re.match(r"#{1,6} (.+)", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        found.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def test_the_readme_is_a_readme() -> None:
    """What kms is and how to start, under 250 lines; the manual lives under docs/."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250, len(lines)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_between_the_documents_resolves(document: Path) -> None:
    broken = []
    for target in LINK.findall("\n".join(prose(document))):  # a link's text may span lines
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        name, _, anchor = target.partition("#")
        linked = (document.parent / name).resolve() if name else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no such heading")
    assert not broken, broken


def test_no_document_holds_merge_leftovers() -> None:
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for marker in ("<<<<<<< ", "\n=======\n", ">>>>>>> "):
            assert marker not in text, (document, marker)


# -- the settings table ---------------------------------------------------------------------------

CONFIGURATION = ROOT / "docs" / "configuration.md"
BEGIN, END = "<!-- settings table: begin -->", "<!-- settings table: end -->"


def documented_defaults() -> list[tuple[str, Any]]:
    """(key, default) for every setting the table gives a default; ``-`` (none) is skipped."""
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "the settings table has lost its markers"
    rows = [line for line in text.split(BEGIN, 1)[1].split(END, 1)[0].splitlines() if line]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    key_column, default_column = header.index("Key"), header.index("Default")
    defaults = []
    for row in rows[2:]:
        cells = row.strip("|").split("|")
        keys = re.findall(r"`([^`]+)`", cells[key_column])
        values = re.findall(r"`([^`]+)`", cells[default_column])
        if values:
            defaults += [
                (key, yaml.safe_load(value)) for key, value in zip(keys, values, strict=True)
            ]
    return defaults


def nested(key: str, value: Any) -> dict[str, Any]:
    """``kms.deletion.min_pending_days`` -> ``{"kms": {"deletion": {"min_pending_days": ...}}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def test_the_settings_table_states_the_loaders_defaults(tmp_path: Path) -> None:
    """A file that sets a setting to the table's default loads exactly as a file that leaves it
    out. An unknown key is refused by the loader, so a renamed setting fails here too."""
    database = {"database": {"dsn": str(tmp_path / "kms.db")}}
    minimal = tmp_path / "minimal.yaml"
    minimal.write_text(yaml.safe_dump(database), encoding="utf-8")
    expected = load_settings(minimal, environ={})
    defaults = documented_defaults()
    assert len(defaults) >= 20, defaults
    for key, value in defaults:
        explicit = tmp_path / "explicit.yaml"
        explicit.write_text(yaml.safe_dump({**database, **nested(key, value)}), encoding="utf-8")
        assert load_settings(explicit, environ={}) == expected, f"{key}: the table says {value!r}"
