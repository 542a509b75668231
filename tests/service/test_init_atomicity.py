"""``kms init`` writes the schema and the keystore rows in one transaction: a failure after the
schema exists (here, KDF parameters that cannot be stored) leaves an empty database, which a
later init accepts. On SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from kms.database import _create_schema_with
from kms.master import init_database, open_master_keyring
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.faults import existing_tables
from kms.store.keystore_rows import write_keystore
from tests.helpers.keystore import TEST_ITERATIONS, TEST_PASSPHRASE, write_passphrase_file


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kms.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = create_kms_engine(url, pool=False)
    yield engine
    engine.dispose()


def test_a_failure_after_the_schema_rolls_the_schema_back(
    url: str, engine: Engine, tmp_path: Path
) -> None:
    with pytest.raises(DBAPIError):
        # A missing init marker (NOT NULL) fails only when the keystore rows are written, after
        # every table of the schema has been created in the same transaction.
        _create_schema_with(
            url,
            lambda conn: write_keystore(
                conn,
                {"kdf_parameters": b"$pbkdf2-sha256$i=600000,l=32$AAAA", "init_marker": None},  # type: ignore[dict-item]
            ),
        )
    assert existing_tables(engine) == []
    settings = Settings(
        database_dsn=url,
        master_passphrase_file=write_passphrase_file(tmp_path / "master.key", TEST_PASSPHRASE),
        kdf_iterations=TEST_ITERATIONS,
        insecure_test_kdf_floor=TEST_ITERATIONS,
    )
    init_database(settings)  # the database is still "empty", so init accepts it
    open_master_keyring(settings).close()
