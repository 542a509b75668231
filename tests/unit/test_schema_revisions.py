"""The schema check reads both revisions without Alembic (kms.store.schema): this kms's head
from its migration files, the database's from Alembic's version table. Both are held here to
Alembic's own answers, and a process that opens a keystore does not import Alembic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text

from kms.store.schema import (
    VERSION_TABLE,
    alembic_config,
    current_revision,
    head_revision,
    script_revisions,
    upgrade_to_head,
)
from tests.helpers.imports import imported_with


def alembic_current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'kms.db'}")
    yield engine
    engine.dispose()


def test_the_head_is_alembics_head_and_the_last_migration() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert head_revision() == script.get_current_head()
    # Not the first revision or any other: every migration before it leads to it.
    assert len(list(script.walk_revisions())) > 1
    assert script.get_revision(head_revision()).nextrev == frozenset()


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('revision = "0008"\ndown_revision = "0007"\n', ("0008", "0007")),
        ("revision: str = '0002'\ndown_revision: str | None = '0001'\n", ("0002", "0001")),
        ('revision = "0001"\ndown_revision = None\n', ("0001", None)),
    ],
)
def test_a_migrations_revision_lines_are_read(lines: str, expected: tuple[str, str | None]) -> None:
    source = f'"""A migration."""\n\nimport sqlalchemy as sa\n\n{lines}branch_labels = None\n'
    assert script_revisions(source, "0008_x.py") == expected


@pytest.mark.parametrize(
    "lines",
    [
        'revision = "0008"\n',
        'down_revision = "0007"\n',
        '# revision = "0008"\ndown_revision = None\n',
    ],
)
def test_a_migration_without_both_lines_is_named(lines: str) -> None:
    with pytest.raises(
        RuntimeError, match="migration 0008_x.py names no revision or down_revision"
    ):
        script_revisions(lines, "0008_x.py")


def test_a_database_alembic_never_touched_has_no_revision(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE other (id INTEGER)"))
    assert current_revision(engine) is None
    assert alembic_current(engine) is None


def test_a_migrated_database_is_at_the_head_and_an_older_one_at_its_own(engine: Engine) -> None:
    upgrade_to_head(engine)
    assert current_revision(engine) == alembic_current(engine) == head_revision()
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    assert current_revision(engine) == alembic_current(engine) == "0001"
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
    assert current_revision(engine) is None
    assert alembic_current(engine) is None


def test_a_version_table_with_two_revisions_is_refused(engine: Engine) -> None:
    upgrade_to_head(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('0001')"))
    with pytest.raises(RuntimeError, match=f"{VERSION_TABLE} holds 2 revisions, not one"):
        current_revision(engine)


def test_opening_a_keystore_does_not_import_alembic() -> None:
    # What `kms serve` (kms.wsgi, kms.master) and the operator commands import.
    opened = "kms.master, kms.backups, kms.upgrade, kms.wsgi"
    assert imported_with(opened, ("alembic", "mako")) == []
