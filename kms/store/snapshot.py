"""Whole-database snapshots for ``kms backup`` and ``kms restore``: every table kms owns, read in
one consistent transaction and written back in the caller's.

Tables are read in ``metadata.sorted_tables`` order (parents before children, so the rows insert
back in the same order) and rows in primary-key order, so the same database always gives the
same snapshot. A table added by a later migration is included without a change here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select

from kms.store.models import metadata

Row = dict[str, Any]


def _as_utc(value: Any) -> Any:
    # SQLite hands back naive datetimes; every stored time is UTC.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def table_names() -> list[str]:
    return [table.name for table in metadata.sorted_tables]


def column_names(table: str) -> list[str]:
    return [column.name for column in metadata.tables[table].columns]


def read_snapshot(
    engine: Engine,
    on_start: Callable[[str, int], None],
    on_row: Callable[[str, Row], None],
) -> None:
    """Read every row in one read transaction: a snapshot even while servers write.

    ``on_start`` gets the schema revision and the number of rows before any row is read;
    ``on_row`` gets each row (bytes as bytes, times as aware UTC datetimes).
    """
    with _snapshot_connection(engine) as conn:
        revision = current_revision_in(conn)
        total = sum(
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in metadata.sorted_tables
        )
        on_start(revision, total)
        for table in metadata.sorted_tables:
            query = select(table).order_by(*table.primary_key.columns)
            for row in conn.execute(query):
                on_row(
                    table.name,
                    {name: _as_utc(_plain(value)) for name, value in row._mapping.items()},
                )


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview | bytearray) else value


def current_revision_in(conn: Connection) -> str:
    from alembic.runtime.migration import MigrationContext

    revision = MigrationContext.configure(conn).get_current_revision()
    return revision or ""


class _snapshot_connection:  # named like a function: used as a context manager
    """A connection in one read transaction that sees a single moment of the database.

    PostgreSQL: REPEATABLE READ. SQLite (in autocommit mode under kms, kms.store.db): an explicit
    BEGIN, after which WAL gives the reader the database as of its first read until the end.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def __enter__(self) -> Connection:
        if self._engine.dialect.name == "sqlite":
            conn = self._engine.connect()
            conn.exec_driver_sql("BEGIN")
        else:
            conn = self._engine.connect().execution_options(isolation_level="REPEATABLE READ")
            conn.begin()
        self._conn = conn
        return conn

    def __exit__(self, *_exc: object) -> None:
        assert self._conn is not None  # noqa: S101
        try:
            if self._engine.dialect.name == "sqlite":
                self._conn.exec_driver_sql("ROLLBACK")
            else:
                self._conn.rollback()
        finally:
            self._conn.close()


def write_rows(
    conn: Connection, rows: Iterator[tuple[str, Row]], on_row: Callable[[], None]
) -> None:
    """Insert rows, in the order given, in the caller's transaction."""
    for table, row in rows:
        conn.execute(insert(metadata.tables[table]).values(**row))
        on_row()
