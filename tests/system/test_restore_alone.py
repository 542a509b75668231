"""``kms restore`` runs alone and writes all or nothing (docs/operations.md, Backup and restore).

Attacks with real processes: a ``kms serve`` whose SQLite file was removed under it (it keeps the
old file open, and its write-ahead log beside the path) or whose PostgreSQL tables were dropped,
and a ``kms restore`` beside it; a restore killed part-way; a restore whose rows fail after the
first were written. What must hold: the restore is refused in one line while a server runs and
nothing is written, every ciphertext made earlier decrypts, and a restore that does not finish
leaves the target as it was.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kms.backups import backup_database
from kms.master import open_master_keyring
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.backups import open_backup, seal_backup
from tests.helpers.config import write_config
from tests.helpers.harness import (
    COMMAND_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    clean_environment,
    create_key,
    database_rows,
    expect_json,
    free_port,
    initialise_database,
    prepare_deployment,
    run_kms,
    unb64,
    write_dev_certificates,
)
from tests.helpers.keystore import make_service

pytestmark = pytest.mark.slow

PUBLIC_RELATIONS = "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"

KEYS = 10
PER_KEY = 10  # 100 ciphertexts in all, made and checked in one batch per key


@contextmanager
def serving(deployment: Deployment) -> Iterator[tuple[ServerProcess, KMSClient]]:
    server = ServerProcess(deployment)
    try:
        with closing(KMSClient(deployment)) as client:
            server.wait_until_serving(client)
            yield server, client
    finally:
        server.stop()


Made = dict[str, list[tuple[bytes, str]]]


def encrypt_many(client: KMSClient) -> Made:
    """``KEYS`` keys with ``PER_KEY`` ciphertexts each: {key id: [(plaintext, ciphertext)]}."""
    made: Made = {}
    for k in range(KEYS):
        key_id = f"restore-{k}"
        create_key(client, key_id=key_id)
        plaintexts = [f"{key_id}/{n}".encode() for n in range(PER_KEY)]
        body = {"key_id": key_id, "batch": [{"plaintext": b64(p)} for p in plaintexts]}
        results = expect_json(client.post("/v1/kms/encrypt", json=body), 200)["results"]
        made[key_id] = [(p, r["ciphertext"]) for p, r in zip(plaintexts, results, strict=True)]
    return made


def undecryptable(client: KMSClient, made: Made) -> list[str]:
    """Each ciphertext that does not decrypt to its plaintext, with what it got instead."""
    failed = []
    for key_id, pairs in made.items():
        body = {"key_id": key_id, "batch": [{"ciphertext": c} for _, c in pairs]}
        response = client.post("/v1/kms/decrypt", json=body)
        if response.status_code != 200:
            failed += [f"{key_id}: {response.status_code}"] * len(pairs)
            continue
        for (plaintext, _), result in zip(pairs, response.json()["results"], strict=True):
            if "plaintext" not in result or unb64(result["plaintext"]) != plaintext:
                failed.append(f"{key_id}: {result}")
    return failed


def refused_in_one_line(result: subprocess.CompletedProcess[str], progress: str = "") -> str:
    """Exit 1 and one ``kms:`` line, after the progress bar's label if it began ``progress``."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    lines = result.stderr.splitlines()
    if progress and lines and lines[0].startswith(progress):
        lines = lines[1:]
    assert len(lines) == 1, output
    assert lines[0].startswith("kms: "), output
    return lines[0]


def test_restore_beside_a_server_whose_database_file_was_removed_is_refused(
    certificates: Path, tmp_path: Path
) -> None:
    deployment = prepare_deployment(tmp_path / "node", certificates)
    backup = tmp_path / "kms.backup"
    database = deployment.database
    with serving(deployment) as (_server, client):
        made = encrypt_many(client)
        taken = run_kms("backup", str(backup), config=deployment.config)
        assert taken.returncode == 0, taken.stderr
        database.unlink()  # the server keeps the old file open; its -wal and -shm stay
        line = refused_in_one_line(run_kms("restore", str(backup), config=deployment.config))
        assert f"a kms server is using {database}" in line
        assert "nothing was changed" in line
        # Nothing of the restore's: no temporary file. (What the running server answers now is
        # not the restore's doing either: a connection it opens after the removal finds an empty
        # file at the path, so some of its answers are 503 until it stops.)
        assert sorted(p.name for p in database.parent.glob(".kms.db.init-*")) == []
    # Stopped. Whether the removed database's -wal stays beside the path depends on what the
    # server's connections did after the removal; a -wal left there is named by the restore,
    # which writes nothing while it is there.
    left = sorted(database.parent.glob("kms.db-*"))
    if any(path.name == "kms.db-wal" for path in left):
        refused = run_kms("restore", str(backup), config=deployment.config)
        assert refused.returncode == 1
        assert "kms.db-wal" in refused.stderr, refused.stderr
    # They belong to the database that was removed (as does a file the server's connections may
    # have created at the path): once they go, the restore runs, and a new server on the
    # restored file decrypts every ciphertext made before.
    for path in [*left, database]:
        path.unlink(missing_ok=True)
    restored = run_kms("restore", str(backup), config=deployment.config)
    assert restored.returncode == 0, restored.stderr
    with serving(deployment) as (_server, client):
        assert undecryptable(client, made) == []


def test_restore_beside_a_postgres_server_whose_tables_were_dropped_is_refused(
    tmp_path: Path, postgres_url: str
) -> None:
    directory = tmp_path / "node"
    write_dev_certificates(directory)
    initialise_database(postgres_url, directory / "master.key")
    deployment = Deployment(directory=directory, port=free_port())
    write_config(deployment.config, directory=directory, port=deployment.port, dsn=postgres_url)
    backup = tmp_path / "kms.backup"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with serving(deployment) as (_server, client):
            made = encrypt_many(client)
            taken = run_kms("backup", str(backup), config=deployment.config)
            assert taken.returncode == 0, taken.stderr
            with admin.connect() as conn:  # the database emptied under the running server
                conn.execute(text("DROP SCHEMA public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
            line = refused_in_one_line(run_kms("restore", str(backup), config=deployment.config))
            assert "kms server connection(s) are open on the database" in line
            with admin.connect() as conn:  # nothing written
                assert conn.execute(text(PUBLIC_RELATIONS)).scalar_one() == 0
        restored = run_kms("restore", str(backup), config=deployment.config)
        assert restored.returncode == 0, restored.stderr
        with serving(deployment) as (_server, client):
            assert undecryptable(client, made) == []
    finally:
        admin.dispose()


# -- a restore that does not finish leaves the target as it was --------------------------------

#: ``kms restore`` in a process that kills itself (SIGKILL: no handler, no cleanup) once it has
#: written ``sys.argv[1]`` rows into the new database.
DIES_PART_WAY = """
import os, signal, sys
import kms.store.snapshot as snapshot

after = int(sys.argv.pop(1))
write_rows = snapshot.write_rows

def dying(conn, rows, on_row):
    written = 0
    def row():
        nonlocal written
        on_row()
        written += 1
        if written == after:
            os.kill(os.getpid(), signal.SIGKILL)
    write_rows(conn, rows, row)

snapshot.write_rows = dying
from kms.cli import main
sys.argv[0] = "kms"
main()
"""


@pytest.fixture
def backed_up(certificates: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A backup of a keystore with a few keys, and the config of an empty target beside it."""
    source = prepare_deployment(tmp_path / "source", certificates)
    settings = Settings(
        database_dsn=str(source.database), master_passphrase_file=source.passphrase_file
    )
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url, pool=False))
    try:
        service = make_service(repository, keyring)
        for k in range(3):
            service.create_key(key_id=f"kept-{k}")
    finally:
        repository.close()
        keyring.close()
    backup = tmp_path / "kms.backup"
    backup_database(
        settings, backup
    )  # what `kms backup` runs (tests/system/test_operator_commands.py)
    target = tmp_path / "target" / "kms.db"
    target.parent.mkdir()
    target.touch()  # an empty file: what restore may replace
    config = write_config(
        tmp_path / "target.yaml", passphrase_file=source.passphrase_file, dsn=target
    )
    return backup, config


def test_a_restore_killed_part_way_leaves_the_target_as_it_was(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    backup, config = backed_up
    target = tmp_path / "target" / "kms.db"
    settings = Settings(
        database_dsn=str(tmp_path / "source" / "kms.db"),
        master_passphrase_file=tmp_path / "source" / "master.key",
    )
    document = open_backup(settings, backup.read_bytes())
    rows = json.loads(document.split(b"\n", 1)[0])["rows"]
    assert rows > 4
    killed = subprocess.run(
        [sys.executable, "-c", DIES_PART_WAY, "4", "restore", str(backup)],
        env=clean_environment(config),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    assert target.read_bytes() == b""  # the old (empty) file, untouched
    # What is left beside it is the unfinished temporary file, never a -wal or -shm of the target.
    assert not list(target.parent.glob("kms.db-*"))
    leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(".kms.db.init-")]
    assert leftovers
    restored = run_kms("restore", str(backup), config=config)
    assert restored.returncode == 0, restored.stderr
    assert len(database_rows(target)["keys"]) == 3


def test_a_restore_whose_last_row_fails_leaves_the_target_as_it_was(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    """A backup with a valid tag whose last row repeats a key: every row before it is written
    into the new database, then the insert fails; the target must not change."""
    backup, config = backed_up
    target = tmp_path / "target" / "kms.db"
    settings = Settings(
        database_dsn=str(tmp_path / "source" / "kms.db"),
        master_passphrase_file=tmp_path / "source" / "master.key",
    )
    # The document inside, without the tag line and the final "".
    lines = open_backup(settings, backup.read_bytes()).split(b"\n")[:-2]
    header, body = json.loads(lines[0]), lines[1:]
    repeated = next(line for line in reversed(body) if json.loads(line)["table"] == "keys")
    header["rows"] = len(body) + 1
    content = (
        json.dumps(header).encode() + b"\n" + b"".join(line + b"\n" for line in [*body, repeated])
    )
    keyring = open_master_keyring(settings)
    try:
        mac = keyring.backup_mac()
        tag = mac.tag(content)
        mac.close()
    finally:
        keyring.close()
    forged = content + json.dumps({"tag": base64.b64encode(tag).decode()}).encode() + b"\n"
    damaged = tmp_path / "repeated.backup"
    damaged.write_bytes(seal_backup(settings, forged))
    line = refused_in_one_line(
        run_kms("restore", str(damaged), config=config), progress="kms: restoring"
    )
    assert str(target) in line
    assert target.read_bytes() == b""
    assert sorted(p.name for p in target.parent.iterdir()) == ["kms.db", "kms.db.serving"]
    shutil.copy(backup, tmp_path / "again.backup")
    assert run_kms("restore", str(tmp_path / "again.backup"), config=config).returncode == 0
