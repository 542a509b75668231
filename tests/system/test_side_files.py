"""The files kms keeps beside a SQLite database (``<database>.serving``, ``<database>.changes``,
``<database>.generations``) in a directory another user can write to (docs/security.md, Files
beside the database).

The attacker plants what kms would open there: a symbolic link to a file of kms's user (kms would
grow it and write counters into it), a dangling link (kms would create the file it names), a
FIFO, or a file of their own. Each is refused before anything is written through it: ``kms
serve`` and the commands that must run alone exit 1 with one line naming the file; a command that
only tells servers of a change (``kms rekey``'s last step) says so and uses counters of its own.
The file pointed at is unchanged, or not created.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.config import write_config
from tests.helpers.harness import free_port, initialise_database, run_kms
from tests.helpers.machine import unavailable

pytestmark = pytest.mark.slow

PRECIOUS = b"a file of kms's user that no one may make kms write into\n"


def one_line(result: subprocess.CompletedProcess[str], *names: object) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "Booting worker" not in output
    lines = [line for line in result.stderr.splitlines() if line.startswith("kms: ")]
    assert len(lines) == 1, output
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def plant(side: Path, kind: str, victim: Path) -> None:
    """What the other user leaves where kms's side file belongs."""
    if kind == "symlink":
        side.symlink_to(victim)
    elif kind == "dangling symlink":
        side.symlink_to(victim)  # victim does not exist: kms would create it
    elif kind == "fifo":
        os.mkfifo(side, 0o666)
    elif kind == "another user's file":
        if os.geteuid() != 0:
            unavailable("root, to make a file another user owns")
        side.write_bytes(b"")
        os.chown(side, 65534, 65534)
    else:
        raise AssertionError(kind)


def victim_of(kind: str, tmp_path: Path) -> Path:
    victim = tmp_path / "elsewhere" / "precious"
    victim.parent.mkdir()
    if kind != "dangling symlink":
        victim.write_bytes(PRECIOUS)
    return victim


def assert_untouched(kind: str, victim: Path) -> None:
    if kind == "dangling symlink":
        assert not victim.exists()
    else:
        assert victim.read_bytes() == PRECIOUS


@pytest.mark.parametrize(
    ("suffix", "kind"),
    [
        (".serving", "dangling symlink"),
        (".changes", "symlink"),
        (".changes", "fifo"),
        (".serving", "another user's file"),
        (".generations", "symlink"),
        (".generations", "another user's file"),
    ],
)
def test_serve_refuses_a_planted_side_file(
    certificates: Path, tmp_path: Path, suffix: str, kind: str
) -> None:
    database = tmp_path / "data" / "kms.db"
    initialise_database(database, certificates / "master.key")
    side = database.with_name(database.name + suffix)
    side.unlink(missing_ok=True)  # init's own lock file
    victim = victim_of(kind, tmp_path)
    plant(side, kind, victim)
    config = write_config(
        tmp_path / "config.yaml", directory=certificates, port=free_port(), dsn=database
    )
    line = one_line(run_kms("serve", config=config, cwd=tmp_path), side)
    assert "refusing to use" in line
    assert_untouched(kind, victim)


@pytest.fixture
def keystore(certificates: Path, tmp_path: Path) -> tuple[Path, Path]:
    """An initialised database and the config of the operator commands."""
    database = tmp_path / "data" / "kms.db"
    initialise_database(database, certificates / "master.key")
    config = write_config(
        tmp_path / "commands.yaml", passphrase_file=certificates / "master.key", dsn=database
    )
    return database, config


def new_passphrase(tmp_path: Path) -> Path:
    path = tmp_path / "new.key"
    path.write_bytes(b"a new passphrase for the side file tests\n")
    path.chmod(0o400)
    return path


def test_rekey_refuses_a_symlinked_serving_lock(
    keystore: tuple[Path, Path], tmp_path: Path
) -> None:
    database, config = keystore
    side = database.with_name("kms.db.serving")
    side.unlink()
    victim = victim_of("dangling symlink", tmp_path)
    plant(side, "dangling symlink", victim)
    before = database.read_bytes()
    line = one_line(
        run_kms("rekey", "--new-passphrase-file", str(new_passphrase(tmp_path)), config=config),
        side,
    )
    assert "symbolic link" in line
    assert_untouched("dangling symlink", victim)
    assert database.read_bytes() == before


def test_restore_refuses_a_symlinked_serving_lock(
    keystore: tuple[Path, Path], certificates: Path, tmp_path: Path
) -> None:
    _database, config = keystore
    backup = tmp_path / "kms.backup"
    assert run_kms("backup", str(backup), config=config).returncode == 0
    target = tmp_path / "target" / "kms.db"
    target.parent.mkdir()
    side = target.with_name("kms.db.serving")
    victim = victim_of("symlink", tmp_path)
    plant(side, "symlink", victim)
    restore_config = write_config(
        tmp_path / "target.yaml", passphrase_file=certificates / "master.key", dsn=target
    )
    line = one_line(run_kms("restore", str(backup), config=restore_config), side)
    assert "symbolic link" in line
    assert_untouched("symlink", victim)
    assert not target.exists()


def test_a_command_never_writes_counters_through_a_symlinked_changes_file(
    keystore: tuple[Path, Path], tmp_path: Path
) -> None:
    """``kms rekey`` tells servers that every key changed by bumping every counter in
    ``<database>.changes``; through a link it would grow the file pointed at and write into it.
    It refuses the link, says so, and finishes (no server runs to be told)."""
    database, config = keystore
    side = database.with_name("kms.db.changes")
    victim = victim_of("symlink", tmp_path)
    plant(side, "symlink", victim)
    result = run_kms("rekey", "--new-passphrase-file", str(new_passphrase(tmp_path)), config=config)
    assert result.returncode == 0, result.stderr
    assert f"refusing to use {side}: it is a symbolic link" in result.stderr
    assert_untouched("symlink", victim)
