"""Starting and stopping ``kms serve``, and the CLI commands that prepare it.

A startup failure must stop the server before it binds its port or boots a worker, with one
``kms: ...`` line saying why. While each failing server runs, the test itself listens on the
configured port: had gunicorn tried to bind it, it would have logged "Connection in use" and
"Address already in use".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from kms.devcerts import FILE_NAMES
from tests.helpers.config import write_config
from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    KMSClient,
    ServerProcess,
    clean_environment,
    database_rows,
    expect_json,
    free_port,
    initialise_database,
    kms_command,
    prepare_deployment,
    run_kms,
)
from tests.helpers.raw import parse_response, read_head, read_to_end, tls_connection

pytestmark = pytest.mark.slow


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port this test listens on, so that any attempt to bind it would fail loudly."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield holder.getsockname()[1]


def serve_until_exit(config: Path, cwd: Path) -> tuple[int, str]:
    """Run ``kms serve`` that is expected to stop by itself; return its code and output."""
    result = subprocess.run(
        kms_command("serve"),
        env=clean_environment(config),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    return result.returncode, result.stdout


def assert_refused_before_binding(returncode: int, output: str) -> str:
    """Exit code, no worker, no bind, exactly one ``kms:`` line; return that line."""
    # Exactly 1: the systemd unit does not restart on status 1 (RestartPreventExitStatus=1).
    assert returncode == 1, (returncode, output)
    kms_lines = [line for line in output.splitlines() if line.startswith("kms: ")]
    assert len(kms_lines) == 1, output
    assert "Booting worker" not in output
    assert "Listening at" not in output
    assert "in use" not in output  # "Connection in use", "Address already in use"
    assert "Can't connect" not in output
    assert "Traceback" not in output
    return kms_lines[0]


def write_passphrase(path: Path, passphrase: bytes, mode: int) -> Path:
    path.write_bytes(passphrase + b"\n")
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("wrong_passphrase", "mode", "expected"),
    [(True, 0o400, "wrong master passphrase"), (False, 0o644, "mode 0644")],
    ids=["wrong-passphrase", "file-readable-by-others"],
)
def test_a_bad_passphrase_file_stops_the_server_before_it_binds(
    certificates: Path,
    tmp_path: Path,
    held_port: int,
    wrong_passphrase: bool,
    mode: int,
    expected: str,
) -> None:
    database = tmp_path / "kms.db"
    initialise_database(database, certificates / "master.key")
    right = (certificates / "master.key").read_bytes().rstrip(b"\n")
    passphrase_file = write_passphrase(
        tmp_path / "other.key", b"not the passphrase" if wrong_passphrase else right, mode
    )
    config = write_config(
        tmp_path / "config.yaml",
        directory=certificates,
        port=held_port,
        passphrase_file=passphrase_file,
        dsn=database,
    )
    line = assert_refused_before_binding(*serve_until_exit(config, tmp_path))
    assert expected in line
    if not wrong_passphrase:
        assert str(passphrase_file) in line


def test_uninitialised_database_asks_for_kms_init(
    certificates: Path, tmp_path: Path, held_port: int
) -> None:
    database = tmp_path / "never-initialised.db"
    config = write_config(
        tmp_path / "config.yaml", directory=certificates, port=held_port, dsn=database
    )
    line = assert_refused_before_binding(*serve_until_exit(config, tmp_path))
    assert "kms init" in line
    assert not database.exists()


def test_a_serving_lock_that_cannot_be_taken_stops_the_server_before_it_binds(
    certificates: Path, tmp_path: Path
) -> None:
    """docs/operations.md (`kms rekey`): a server holds a shared lock beside its SQLite database,
    which the commands that must run alone take exclusively. A server that cannot take it (here
    its path is a directory) must not serve unprotected: it exits 1 with one line before
    binding."""
    database = tmp_path / "kms.db"
    initialise_database(database, certificates / "master.key")
    (tmp_path / "kms.db.serving").unlink()  # init's own lock file
    (tmp_path / "kms.db.serving").mkdir()
    config = write_config(
        tmp_path / "config.yaml", directory=certificates, port=free_port(), dsn=database
    )
    line = assert_refused_before_binding(*serve_until_exit(config, tmp_path))
    assert "cannot take the serving lock beside the database" in line


@pytest.mark.parametrize("setting", ["server_cert", "server_key", "ca_cert"])
def test_missing_tls_file_is_named(
    certificates: Path, tmp_path: Path, held_port: int, setting: str
) -> None:
    database = tmp_path / "kms.db"
    initialise_database(database, certificates / "master.key")
    missing = tmp_path / f"missing-{setting}.pem"
    config = write_config(
        tmp_path / "config.yaml",
        directory=certificates,
        port=held_port,
        dsn=database,
        **{setting: missing},
    )
    line = assert_refused_before_binding(*serve_until_exit(config, tmp_path))
    assert f"server.{setting}" in line
    assert str(missing) in line


def test_serves_and_exits_zero_on_sigterm(certificates: Path, tmp_path: Path) -> None:
    """The control for the refusals above: the same files, correctly configured, serve."""
    deployment = prepare_deployment(tmp_path / "deployment", certificates)
    server = ServerProcess(deployment)
    try:
        with closing(KMSClient(deployment)) as client:
            server.wait_until_serving(client)
            assert expect_json(client.get("/v1/kms/keys"), 200) == []
    finally:
        returncode = server.stop()
    output = server.output()
    assert returncode == 0, output
    assert "Booting worker" in output
    assert "Shutting down: Master" in output
    assert "Traceback" not in output


def test_kms_init_twice_refuses_the_second_time(certificates: Path, tmp_path: Path) -> None:
    database = tmp_path / "kms.db"
    config = write_config(
        tmp_path / "config.yaml", directory=certificates, port=free_port(), dsn=database
    )
    first = run_kms("init", config=config, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("kms: initialised ")
    keystore = database_rows(database)
    assert keystore["kms_metadata"]

    second = run_kms("init", config=config, cwd=tmp_path)
    assert second.returncode == 1
    assert second.stdout == ""
    assert second.stderr.splitlines() == [
        "kms: the database is already initialised; nothing was changed"
    ]
    assert database_rows(database) == keystore

    quiet = run_kms("init", "--if-needed", config=config, cwd=tmp_path)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    assert database_rows(database) == keystore


def snapshot_files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        path.name: (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
        for path in sorted(directory.iterdir())
    }


def test_dev_certs_refuses_to_overwrite(certificates: Path, tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    shutil.copytree(certificates, directory)
    before = snapshot_files(directory)
    assert set(FILE_NAMES) <= set(before)
    assert before["master.key"][1] == 0o400

    result = run_kms("dev-certs", str(directory))
    assert result.returncode == 1
    assert result.stderr.startswith("kms: ")
    assert "already exists" in result.stderr
    assert snapshot_files(directory) == before


def test_dev_certs_refuses_if_any_one_file_exists(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "client.key").write_bytes(b"mine")
    os.chmod(directory / "client.key", 0o644)

    result = run_kms("dev-certs", str(directory))
    assert result.returncode == 1
    assert "client.key" in result.stderr
    assert snapshot_files(directory) == {"client.key": (b"mine", 0o644)}


def test_sigterm_lets_an_in_flight_request_finish(certificates: Path, tmp_path: Path) -> None:
    """A request whose body is still arriving when SIGTERM comes is answered, then kms exits 0.

    The client asks for "100 Continue" and gets it, so its worker holds the request, waiting for
    the body, before the server is told to stop; the body is sent only once that worker has
    logged that it is stopping with one request still arriving.
    """
    deployment = prepare_deployment(tmp_path / "deployment", certificates)
    server = ServerProcess(deployment)
    try:
        with closing(KMSClient(deployment)) as client:
            server.wait_until_serving(client)
        body = json.dumps({"key_id": "in-flight", "purpose": "sign"}).encode()
        with tls_connection(deployment) as tls:
            tls.sendall(
                b"POST /v1/kms/keys HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            assert read_head(tls) == b"HTTP/1.1 100 Continue\r\n\r\n"
            server.process.send_signal(signal.SIGTERM)
            server.wait_for_log("worker stopping (requests arriving: 1,")
            tls.sendall(body)
            answer = read_to_end(tls)
        assert answer, "the connection was closed without an answer"
        response = parse_response(answer)
        assert response.status == 201, answer
        assert response.headers["connection"] == "close", answer
        assert response.json()["key_id"] == "in-flight"
    finally:
        returncode = server.stop()
    assert returncode == 0, server.output()
    assert "in-flight" in str(database_rows(deployment.database)["keys"])


def non_canonical(salt_text: bytes) -> bytes:
    """The same salt bytes spelled with non-zero padding bits: base64 decoders accept it."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(salt_text[-3:-2])
    return salt_text[:-3] + alphabet[last ^ 1 : (last ^ 1) + 1] + b"=="


# Stored KDF parameters as an attacker (or a broken tool) might leave them, and what the one
# startup line must say about each.
TAMPERED_KDF = {
    "non-ascii": (lambda value: value.replace(b"pbkdf2", b"pbkdf\xc2\xb2"), "non-ASCII"),
    "huge-count": (
        lambda value: value.replace(b"i=600000", b"i=9999999999"),
        "9999999999 PBKDF2 iterations",
    ),
    "just-above-the-ceiling": (
        lambda value: value.replace(b"i=600000", b"i=10000001"),
        "10000001 PBKDF2 iterations",
    ),
    "tiny-count": (lambda value: value.replace(b"i=600000", b"i=1"), "1 PBKDF2 iterations"),
    "just-below-the-floor": (
        lambda value: value.replace(b"i=600000", b"i=599999"),
        "599999 PBKDF2 iterations",
    ),
    "non-canonical-salt": (
        lambda value: (
            value[: value.rindex(b"$") + 1] + non_canonical(value[value.rindex(b"$") + 1 :])
        ),
        "canonical base64",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERED_KDF))
def test_tampered_kdf_parameters_stop_the_server_with_one_line(
    certificates: Path, tmp_path: Path, held_port: int, case: str
) -> None:
    tamper, expected = TAMPERED_KDF[case]
    database = tmp_path / "kms.db"
    initialise_database(database, certificates / "master.key")
    with closing(sqlite3.connect(database)) as db, db:
        (value,) = db.execute(
            "SELECT value FROM kms_metadata WHERE name = 'kdf_parameters'"
        ).fetchone()
        assert value.startswith(b"$pbkdf2-sha256$i=600000,")
        tampered = tamper(bytes(value))
        assert tampered != value
        db.execute("UPDATE kms_metadata SET value = ? WHERE name = 'kdf_parameters'", (tampered,))
    config = write_config(
        tmp_path / "config.yaml", directory=certificates, port=held_port, dsn=database
    )
    line = assert_refused_before_binding(*serve_until_exit(config, tmp_path))
    assert expected in line
    assert str(database) in line  # names the file
