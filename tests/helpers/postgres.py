"""Throwaway PostgreSQL databases for the tests.

The PostgreSQL tests run when pytest is given --postgres-dsn (`.ci/run` starts the machine's
PostgreSQL and passes it through `make test`); without it they are skipped, or fail in CI. The
DSN names a role that may create databases: each test gets a database of its own, dropped
afterwards.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from tests.helpers.machine import unavailable


def given_postgres_dsn(config: pytest.Config) -> str:
    """The --postgres-dsn of this run; without one the test is skipped (failed in CI)."""
    dsn = config.getoption("--postgres-dsn")
    if not dsn:
        unavailable("no --postgres-dsn given")
    return str(dsn)


@contextmanager
def new_database(dsn: str) -> Iterator[str]:
    """The URL of a new, empty database on the server of ``dsn``, dropped on the way out."""
    name = f"kms_test_{random.getrandbits(64):016x}"
    admin = create_engine(dsn, isolation_level="AUTOCOMMIT", hide_parameters=True)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(dsn).set(database=name).render_as_string(hide_password=False)
        drop_database(admin, name)
    finally:
        admin.dispose()


def drop_database(admin: Any, name: str) -> None:
    """Drop a test database, its sessions ended. An autovacuum worker that happens to be in it
    is not ours to end (without pg_signal_backend the DROP is refused): it finishes in a moment,
    so the DROP is tried again for a while before the refusal counts."""
    for attempt in range(50):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError:
            if attempt == 49:
                raise
            time.sleep(0.2)
