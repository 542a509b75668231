"""The migrations build exactly the tables kms/store/models.py declares.

A change to the models without a migration would work on a fresh test database made from the
models and break every database made by the previous release, which only ``kms upgrade`` (the
migrations) changes. Alembic's own comparison finds the difference: a column, a type, a
nullability, a server default, an index or a table that the two disagree on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from kms.store.models import metadata
from kms.store.schema import upgrade_to_head


def differences(url: str, *, server_defaults: bool = True) -> list[object]:
    engine = create_engine(url)

    def on_this_dialect(item: object, *_: object) -> bool:
        # An object declared for one dialect only (``.ddl_if(dialect=...)``, such as the index
        # of the key listing's binary order on PostgreSQL) is compared on that dialect only.
        only = getattr(item, "_ddl_if", None)
        return only is None or only.dialect in (None, engine.dialect.name)

    try:
        upgrade_to_head(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "compare_server_default": server_defaults,
                    "include_object": on_this_dialect,
                },
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_the_migrations_build_the_models_tables_on_sqlite(tmp_path: Path) -> None:
    # Server defaults are compared on PostgreSQL only: SQLite reflects the empty-string default
    # of keys.description in a form Alembic reports as different from the same default.
    assert differences(f"sqlite:///{tmp_path / 'kms.db'}", server_defaults=False) == []


@pytest.mark.slow
def test_the_migrations_build_the_models_tables_on_postgresql(postgres_url: str) -> None:
    assert differences(postgres_url) == []
