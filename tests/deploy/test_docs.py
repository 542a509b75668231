"""The documents as a whole: the README stays short, every link between the documents resolves,
and no document holds merge leftovers."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")]
    # Ours only: `npm ci` puts newman's dependencies, READMEs and all, under deploy/postman.
    + [path for path in (ROOT / "deploy").glob("**/README.md") if "node_modules" not in path.parts]
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


#: ``pip install`` of a requirement named ``kms`` (``kms``, ``'kms[postgres]'``, ``kms==1.0``):
#: that name on PyPI is another project's package. kms installs from its checkout (``.``,
#: ``'.[postgres]'``) or from a wheel file it built (``./kms-<version>-...whl``).
PYPI_KMS = re.compile(r"""pip3?\s+install\s+(?:-{1,2}[\w-]+(?:=\S+)?\s+)*["']?kms(?![\w./-])""")


def test_the_install_instructions_never_name_the_pypi_package() -> None:
    written = [
        *DOCUMENTS,
        *(
            path
            for path in (ROOT / "deploy").rglob("*")
            if path.is_file() and "node_modules" not in path.parts
        ),
        ROOT / "Makefile",
        *(ROOT / "config").glob("*"),
    ]
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in written
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PYPI_KMS.search(line)
    ]
    assert not found, found


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        ("pip install 'kms[postgres]'", True),
        ("pip install kms", True),
        ("pip3 install --quiet kms==1.2", True),
        ('pip install "kms[hsm]"', True),
        ("pip install '.[postgres]'", False),
        ("pip install .", False),
        ("pip install ./kms-1.0-py3-none-any.whl", False),
        ("pip install kms-1.0-py3-none-any.whl", False),
        ("pip install -e tools/mutants", False),
    ],
)
def test_the_pypi_pattern_tells_the_bad_form(line: str, bad: bool) -> None:
    assert bool(PYPI_KMS.search(line)) is bad
