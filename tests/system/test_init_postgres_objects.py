"""``kms init`` and ``kms restore`` write only into a PostgreSQL database that holds nothing: no
object outside PostgreSQL's own schemas (docs/operations.md, Command line; kms.store.inventory).

Each case puts one kind of object into a new database, runs ``kms init`` as a process, and
checks: exit 1, one line naming the object, and nothing created (the object still there, alone).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from kms.backups import backup_database
from kms.master import init_database
from kms.store.inventory import foreign_objects
from tests.helpers.config import write_config
from tests.helpers.harness import run_kms
from tests.helpers.keystore import make_settings

pytestmark = pytest.mark.slow

#: (what the other application made, how kms names it)
OBJECTS = {
    "table in another schema": (
        "CREATE SCHEMA billing; CREATE TABLE billing.invoices (id integer)",
        "table billing.invoices",
    ),
    "sequence": ("CREATE SEQUENCE invoice_numbers", "sequence public.invoice_numbers"),
    "enum type": ("CREATE TYPE mood AS ENUM ('calm', 'busy')", "type public.mood"),
    "view": ("CREATE VIEW answers AS SELECT 42 AS answer", "view public.answers"),
    "materialized view": (
        "CREATE MATERIALIZED VIEW totals AS SELECT 1 AS total",
        "materialized view public.totals",
    ),
    "function": (
        "CREATE FUNCTION add_one(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1 + 1'",
        "function public.add_one",
    ),
}


@pytest.fixture
def admin(postgres_url: str) -> Iterator[Engine]:
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def everything(admin: Engine) -> list[str]:
    with admin.connect() as conn:
        return foreign_objects(conn, limit=1000)


@pytest.mark.parametrize("kind", sorted(OBJECTS))
def test_init_refuses_a_database_holding_any_object(
    kind: str, admin: Engine, postgres_url: str, certificates: Path, tmp_path: Path
) -> None:
    statement, named = OBJECTS[kind]
    with admin.connect() as conn:
        conn.execute(text(statement))
    before = everything(admin)
    assert named in before
    config = write_config(
        tmp_path / "config.yaml", passphrase_file=certificates / "master.key", dsn=postgres_url
    )
    result = run_kms("init", config=config)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert len(result.stderr.splitlines()) == 1, output
    line = result.stderr.strip()
    assert line.startswith("kms: refusing to initialise "), line
    assert f"it already holds {named}" in line
    assert "nothing was changed" in line
    assert everything(admin) == before  # no kms table, sequence or anything else


def test_restore_refuses_a_database_holding_a_sequence(
    admin: Engine, postgres_url: str, certificates: Path, tmp_path: Path
) -> None:
    # A backup made in process, cheaply (few PBKDF2 iterations): the refusal comes before the
    # backup is checked, so its cost is not what is tested here.
    (tmp_path / "source").mkdir()
    source = make_settings(tmp_path / "source")
    init_database(source)
    backup = tmp_path / "kms.backup"
    backup_database(source, backup)
    statement, named = OBJECTS["sequence"]
    with admin.connect() as conn:
        conn.execute(text(statement))
    config = write_config(
        tmp_path / "target.yaml", passphrase_file=certificates / "master.key", dsn=postgres_url
    )
    result = run_kms("restore", str(backup), config=config)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert f"it already holds {named}" in result.stderr
    assert everything(admin) == [named]


def test_init_accepts_a_database_with_only_an_empty_schema(
    admin: Engine, postgres_url: str, certificates: Path, tmp_path: Path
) -> None:
    # The control: an empty schema of its own (say, one made for kms) is not an object.
    with admin.connect() as conn:
        conn.execute(text("CREATE SCHEMA reserved"))
    config = write_config(
        tmp_path / "config.yaml", passphrase_file=certificates / "master.key", dsn=postgres_url
    )
    result = run_kms("init", config=config)
    assert result.returncode == 0, result.stderr
    assert "table public.kms_metadata" in everything(admin)
