"""Startup and ``kms init`` faults: each is one ``kms: ...`` line naming the cause and the file.

Every case here runs the real command (``kms serve`` or ``kms init``) as a process and checks:
exit status exactly 1, exactly one line on stderr, that line names the file (or the database),
no traceback, and where a file existed before, its bytes are unchanged.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.http.harness import (
    PROCESS_TIMEOUT_SECONDS,
    clean_environment,
    free_port,
    initialise_database,
    kms_command,
    write_config,
    write_dev_certificates,
)

pytestmark = pytest.mark.slow

GUNICORN_LOG = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[INFO\] ")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kms-fault-certs")
    write_dev_certificates(directory)
    return directory


def run(command: str, config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``kms init`` or ``kms serve``, expected to stop by itself; stdout and stderr apart."""
    return subprocess.run(
        kms_command(command),
        env=clean_environment(config),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )


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
        database=database,
        passphrase_file=passphrase_file,
    )


# -- passphrase files that are not regular files (item 4, through kms serve) --------------------


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
    line = one_line_failure(run("serve", config, tmp_path), configured)
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
    assert "wrong master passphrase" in one_line_failure(run("serve", config, tmp_path))
