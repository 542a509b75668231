"""Startup and ``kms init`` faults: each is one ``kms: ...`` line naming the cause and the file.

Every case here runs the real command (``kms serve`` or ``kms init``) as a process and checks:
exit status exactly 1, exactly one line on stderr, that line names the file (or the database),
no traceback, and where a file existed before, its bytes are unchanged.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from kms.store.db import create_kms_engine
from kms.store.schema import upgrade_to_head
from tests.helpers.config import write_config
from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    clean_environment,
    database_rows,
    free_port,
    initialise_database,
    kms_command,
    run_kms,
)
from tests.helpers.machine import fill, mounted_tmpfs, remount_read_only
from tests.helpers.postgres import given_postgres_dsn

pytestmark = pytest.mark.slow

GUNICORN_LOG = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[INFO\] ")


def one_line_failure(result: subprocess.CompletedProcess[str], *names: str | Path) -> str:
    """Exit 1, one ``kms:`` line on stderr naming each of ``names``, nothing else; the line."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "retry later" not in output
    assert "Booting worker" not in output
    assert "Listening at" not in output
    # Besides the one line, only gunicorn's own timestamped log lines ("Starting gunicorn").
    lines = [line for line in result.stderr.splitlines() if not GUNICORN_LOG.match(line)]
    assert len(lines) == 1, output
    (line,) = lines
    assert line.startswith("kms: "), line
    for name in names:
        assert str(name) in line, line
    return line


def config_for(
    certificates: Path, directory: Path, *, database: Path | str, passphrase_file: Path
) -> Path:
    return write_config(
        directory / "config.yaml",
        directory=certificates,
        port=free_port(),
        dsn=database,
        passphrase_file=passphrase_file,
    )


# -- passphrase files that are not regular files (item 4, through kms serve) -----------------------


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_serve_refuses_a_passphrase_file_that_is_not_a_regular_file(
    certificates: Path, tmp_path: Path, kind: str
) -> None:
    database = tmp_path / "kms.db"
    initialise_database(database, certificates / "master.key")
    configured = tmp_path / f"{kind}.key"
    if kind == "symlink":
        configured.symlink_to(certificates / "master.key")
    else:
        os.mkfifo(configured, 0o600)
    config = config_for(certificates, tmp_path, database=database, passphrase_file=configured)
    before = database.read_bytes()
    line = one_line_failure(run_kms("serve", config=config, cwd=tmp_path), configured)
    assert ("symbolic link" if kind == "symlink" else "FIFO") in line
    assert database.read_bytes() == before


def test_serve_reads_a_regular_passphrase_file_in_the_same_setup(
    certificates: Path, tmp_path: Path
) -> None:
    # The control: a regular 0400 file in the same place is opened and read (its content is
    # deliberately wrong), so the refusals above were about the kind of file.
    database = tmp_path / "kms.db"
    initialise_database(database, certificates / "master.key")
    regular = tmp_path / "regular.key"
    regular.write_bytes(b"not the passphrase\n")
    os.chmod(regular, 0o400)
    config = config_for(certificates, tmp_path, database=database, passphrase_file=regular)
    assert "wrong master passphrase" in one_line_failure(
        run_kms("serve", config=config, cwd=tmp_path)
    )


# -- helpers for files -----------------------------------------------------------------------------


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in ``directory`` (not below) with its bytes: "unchanged" covers new files too."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def database_config(certificates: Path, directory: Path, database: Path | str) -> Path:
    """A config in ``directory`` for ``database``, with the certificates' passphrase file."""
    return config_for(
        certificates, directory, database=database, passphrase_file=certificates / "master.key"
    )


def initialised_keystore(certificates: Path, database: Path, *, read: bool = False) -> Path:
    """A keystore at ``database``; ``read``: also read it once, which leaves SQLite's -wal and
    -shm files beside it (as a running server does)."""
    initialise_database(database, certificates / "master.key")
    if read:
        assert database_rows(database)["kms_metadata"]
        assert database.with_name(database.name + "-shm").exists()
    return database


# -- kms init: only into a missing or empty database (item 2) --------------------------------------


def test_init_refuses_a_sqlite_file_of_another_application(
    certificates: Path, tmp_path: Path
) -> None:
    database = tmp_path / "data" / "app.db"
    database.parent.mkdir()
    with closing(sqlite3.connect(database)) as db, db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total TEXT)")
        db.execute("INSERT INTO invoices VALUES (1, '12.50')")
    before = snapshot(database.parent)
    config = database_config(certificates, tmp_path, database)
    line = one_line_failure(run_kms("init", config=config, cwd=tmp_path), database, "invoices")
    assert "nothing was changed" in line
    assert snapshot(database.parent) == before  # no WAL switch, no -wal or -shm file either
    # --if-needed forgives only a keystore that is already there, not someone else's database.
    one_line_failure(
        run_kms("init", "--if-needed", config=config, cwd=tmp_path), database, "invoices"
    )
    assert snapshot(database.parent) == before
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_init_refuses_a_half_made_kms_schema(certificates: Path, tmp_path: Path) -> None:
    # What a crashed init of an earlier release could leave: the schema, but no keystore rows.
    database = tmp_path / "data" / "kms.db"
    database.parent.mkdir()
    engine = create_kms_engine(f"sqlite:///{database}", pool=False)
    upgrade_to_head(engine)
    engine.dispose()
    before = snapshot(database.parent)
    config = database_config(certificates, tmp_path, database)
    line = one_line_failure(run_kms("init", config=config, cwd=tmp_path), database, "kms_metadata")
    assert "already holds table alembic_version, table " in line
    assert snapshot(database.parent) == before


def test_init_of_an_empty_file_and_of_a_missing_one_succeeds(
    certificates: Path, tmp_path: Path
) -> None:
    # The control for the refusals: what init does accept.
    empty = tmp_path / "empty" / "kms.db"
    empty.parent.mkdir()
    empty.touch()
    missing = tmp_path / "missing" / "deeper" / "kms.db"
    for database in (empty, missing):
        config = database_config(certificates, tmp_path, database)
        result = run_kms("init", config=config, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"kms: initialised {database}\n"
        # Beside it only the serving lock, which init holds while it writes (kms.store.serving).
        assert sorted(path.name for path in database.parent.iterdir()) == [
            "kms.db",
            "kms.db.serving",
        ]
        assert database_rows(database)["kms_metadata"]


# -- files that are not (healthy) SQLite databases (item 3) ----------------------------------------


def not_sqlite(database: Path) -> None:
    database.write_text("name,total\ninvoice-1,12.50\n" * 50, encoding="utf-8")


def header_magic_damaged(database: Path) -> None:
    raw = database.read_bytes()
    database.write_bytes(b"SQLite format 2\x00" + raw[16:])


def page_size_damaged(database: Path) -> None:
    raw = database.read_bytes()
    database.write_bytes(raw[:16] + b"\x00\x03" + raw[18:])  # page size 3: not a power of two


@pytest.mark.parametrize("command", ["init", "serve"])
@pytest.mark.parametrize("damage", [not_sqlite, header_magic_damaged, page_size_damaged])
def test_a_file_that_is_not_a_healthy_sqlite_database_is_named(
    certificates: Path, tmp_path: Path, command: str, damage
) -> None:
    database = tmp_path / "data" / "kms.db"
    database.parent.mkdir()
    if damage is not not_sqlite:
        initialised_keystore(certificates, database)
    damage(database)
    before = snapshot(database.parent)
    config = database_config(certificates, tmp_path, database)
    line = one_line_failure(run_kms(command, config=config, cwd=tmp_path), database)
    assert "not a SQLite database, or its header is damaged" in line
    assert snapshot(database.parent) == before


# -- directories -----------------------------------------------------------------------------------


def test_serve_names_a_database_directory_that_does_not_exist(
    certificates: Path, tmp_path: Path
) -> None:
    database = tmp_path / "gone" / "kms.db"
    config = database_config(certificates, tmp_path, database)
    line = one_line_failure(run_kms("serve", config=config, cwd=tmp_path), database)
    assert f"directory {database.parent} does not exist" in line
    assert not database.parent.exists()


def test_init_names_a_database_directory_it_cannot_create(
    certificates: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database directory should be\n", encoding="utf-8")
    database = blocker / "data" / "kms.db"
    config = database_config(certificates, tmp_path, database)
    line = one_line_failure(run_kms("init", config=config, cwd=tmp_path), database)
    assert "Not a directory" in line
    assert blocker.read_text(encoding="utf-8").startswith("a file where")


@pytest.fixture
def read_only_directory(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "ro", "1m") as directory:
        yield directory


def test_init_names_a_read_only_database_directory(
    certificates: Path, tmp_path: Path, read_only_directory: Path
) -> None:
    remount_read_only(read_only_directory)
    database = read_only_directory / "kms.db"
    config = database_config(certificates, tmp_path, database)
    line = one_line_failure(run_kms("init", config=config, cwd=tmp_path), database)
    assert f"directory {read_only_directory} is read-only" in line
    assert list(read_only_directory.iterdir()) == []


@pytest.mark.parametrize("read", [False, True], ids=["closed", "with-wal-and-shm"])
def test_serve_names_a_read_only_database_directory(
    certificates: Path, tmp_path: Path, read_only_directory: Path, read: bool
) -> None:
    database = initialised_keystore(certificates, read_only_directory / "kms.db", read=read)
    before = snapshot(read_only_directory)
    remount_read_only(read_only_directory)
    config = database_config(certificates, tmp_path, database)
    line = one_line_failure(run_kms("serve", config=config, cwd=tmp_path), database)
    assert f"directory {read_only_directory} is read-only" in line
    assert snapshot(read_only_directory) == before


# -- a full disk: a small tmpfs, filled ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small", "1m") as directory:
        yield directory


@pytest.mark.parametrize("read", [False, True], ids=["closed", "with-wal-and-shm"])
def test_serve_names_a_full_disk(
    certificates: Path, tmp_path: Path, small_disk: Path, read: bool
) -> None:
    database = initialised_keystore(certificates, small_disk / "kms.db", read=read)
    fill(small_disk)
    before = (database.read_bytes(), os.stat(database).st_mtime_ns)
    config = database_config(certificates, tmp_path, database)
    line = one_line_failure(run_kms("serve", config=config, cwd=tmp_path), database)
    assert f"the disk holding {small_disk} is full" in line
    assert (database.read_bytes(), os.stat(database).st_mtime_ns) == before


@pytest.mark.parametrize("free_pages", [0, 2, 6])
def test_init_on_a_full_disk_leaves_nothing_and_a_later_init_succeeds(
    certificates: Path, tmp_path: Path, small_disk: Path, free_pages: int
) -> None:
    # With a few pages free, init gets part-way (file created, WAL switched, some tables) first.
    database = small_disk / "kms.db"
    filler = fill(small_disk, leave_bytes=free_pages * 4096)
    config = database_config(certificates, tmp_path, database)
    line = one_line_failure(run_kms("init", config=config, cwd=tmp_path), database)
    assert "full" in line
    # No database, no temporary file: only the (empty) serving lock init held while it wrote.
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "kms.db.serving"]
    filler.unlink()
    result = run_kms("init", config=config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert database_rows(database)["kms_metadata"]


#: ``kms init`` with SQLite's page limit on every connection: the database "fills up" at that
#: many pages with the same SQLITE_FULL a full disk gives, on machines that cannot mount a tmpfs.
INIT_WITH_PAGE_LIMIT = """
import sys
from sqlalchemy import event
from sqlalchemy.pool import Pool

@event.listens_for(Pool, "connect")
def limit_pages(dbapi_connection, _record):
    dbapi_connection.execute(f"PRAGMA max_page_count={int(sys.argv[1])}")

from kms.cli import main
main(["init"], prog_name="kms")
"""


@pytest.mark.parametrize("pages", [1, 3, 6])
def test_init_that_hits_sqlite_full_part_way_leaves_nothing(
    certificates: Path, tmp_path: Path, pages: int
) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    database = directory / "kms.db"
    config = database_config(certificates, tmp_path, database)
    result = subprocess.run(
        [str(Path(kms_command()[0]).with_name("python")), "-c", INIT_WITH_PAGE_LIMIT, str(pages)],
        env=clean_environment(config),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    line = one_line_failure(result, database)
    assert "the disk is full" in line
    assert [path.name for path in directory.iterdir()] == ["kms.db.serving"]
    result = run_kms("init", config=config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert database_rows(database)["kms_metadata"]


# -- PostgreSQL ------------------------------------------------------------------------------------


@pytest.fixture
def postgres_dsn(request: pytest.FixtureRequest) -> str:
    return given_postgres_dsn(request.config)


@pytest.mark.parametrize("command", ["init", "serve"])
def test_a_postgres_server_refusing_the_connection_is_named(
    certificates: Path, tmp_path: Path, postgres_dsn: str, command: str
) -> None:
    url = make_url(postgres_dsn).set(host="127.0.0.1", port=free_port(), database="kms")
    dsn = url.render_as_string(hide_password=False)
    config = database_config(certificates, tmp_path, dsn)
    line = one_line_failure(
        run_kms(command, config=config, cwd=tmp_path), f"@127.0.0.1:{url.port}/kms"
    )
    assert "Connection refused" in line
    if url.password:
        assert f":{url.password}@" not in line


@pytest.mark.parametrize("command", ["init", "serve"])
def test_a_postgres_server_refusing_the_password_is_named(
    certificates: Path, tmp_path: Path, postgres_url: str, command: str
) -> None:
    url = make_url(postgres_url).set(password="not-the-password-42")
    config = database_config(certificates, tmp_path, url.render_as_string(hide_password=False))
    line = one_line_failure(run_kms(command, config=config, cwd=tmp_path), url.database)
    assert "password authentication failed" in line
    assert "not-the-password-42" not in line


def test_init_refuses_a_postgres_database_with_a_table_of_its_own(
    certificates: Path, tmp_path: Path, postgres_url: str
) -> None:
    engine = create_engine(postgres_url, hide_parameters=True)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE invoices (id integer primary key, total text)"))
            conn.execute(text("INSERT INTO invoices VALUES (1, '12.50')"))
        config = database_config(certificates, tmp_path, postgres_url)
        line = one_line_failure(
            run_kms("init", config=config, cwd=tmp_path), make_url(postgres_url).database
        )
        assert "invoices" in line
        with engine.connect() as conn:
            tables = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).all()
            assert tables == [("invoices",)]
            assert conn.execute(text("SELECT total FROM invoices")).all() == [("12.50",)]
    finally:
        engine.dispose()


def test_init_into_an_empty_postgres_database_succeeds_and_names_no_password(
    certificates: Path, tmp_path: Path, postgres_url: str
) -> None:
    config = database_config(certificates, tmp_path, postgres_url)
    result = run_kms("init", config=config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    password = make_url(postgres_url).password
    assert make_url(postgres_url).database in result.stdout
    if password:
        assert f":{password}@" not in result.stdout + result.stderr


# -- configuration mistakes a new user makes ----------------------------------------------------


def test_serve_before_init_says_the_keystore_is_not_initialised(
    certificates: Path, tmp_path: Path
) -> None:
    """A fresh checkout's layout: the database and the audit log under ./data, which `kms init`
    makes. Starting first names the keystore and `kms init`, not the audit log."""
    config = write_config(
        tmp_path / "config.yaml",
        directory=certificates,
        port=free_port(),
        dsn="./data/dev.db",
        audit={"path": "./data/audit.log"},
    )
    line = one_line_failure(run_kms("serve", config=config, cwd=tmp_path), "data/dev.db")
    assert "is not initialised: run `kms init` first" in line
    assert "audit" not in line
    assert not (tmp_path / "data").exists()


def test_a_postgres_dsn_without_a_driver_gets_the_one_kms_takes(
    certificates: Path, tmp_path: Path
) -> None:
    for scheme in ("postgres", "postgresql"):
        dsn = f"{scheme}://kms:s3cret-pw@db.example/kms"
        config = database_config(certificates, tmp_path, dsn)
        line = one_line_failure(run_kms("serve", config=config, cwd=tmp_path), config)
        assert line.startswith(f"kms: database.dsn: {scheme}:// names no driver kms installs")
        assert "write postgresql+psycopg://" in line
        assert "s3cret-pw" not in line


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        'server:\n  port: 8443\n  host: "127.0.0.1"\n database:\n  dsn: "./kms.db"\n',
        encoding="utf-8",
    )
    line = one_line_failure(run_kms("serve", config=config, cwd=tmp_path), config)
    assert f"config file {config} is not valid YAML: line 4, column 2: " in line


def test_a_kms_variable_with_a_typo_is_refused_naming_the_setting_meant(
    certificates: Path, tmp_path: Path
) -> None:
    """``KMS_SERVR_PORT`` (the section misspelt) used to be ignored: kms served on the file's
    port. Refused now, like an unknown YAML key, with the variable meant."""
    config = database_config(certificates, tmp_path, tmp_path / "kms.db")
    result = subprocess.run(
        kms_command("serve"),
        env={**clean_environment(config), "KMS_SERVR_PORT": "8099"},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    line = one_line_failure(result, "KMS_SERVR_PORT")
    assert line == (
        "kms: KMS_SERVR_PORT: unknown setting; did you mean KMS_SERVER_PORT? (environment)"
    )
