"""``make run``, twice: the README says it is idempotent.

It runs in a copy of the repository's Makefile and dev config inside tmp_path (so ./secrets and
./data are the test's own), with this test run's virtualenv and a free port
(``KMS_SERVER_PORT``). ``make run`` serves in the foreground, so each run is a child process in a
session of its own, stopped as Ctrl-C stops it (SIGINT to that whole session) once it has
answered.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    STARTUP_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    clean_environment,
    create_key,
    expect_json,
    free_port,
)

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
SECRETS = ("ca.pem", "ca.key", "server.crt", "server.key", "client.crt", "client.key", "master.key")


@pytest.mark.needs("make")
def test_make_run_twice_keeps_secrets_and_database(tmp_path: Path) -> None:
    checkout = tmp_path / "kms"
    checkout.mkdir()
    # Copied with their times, so the copy's pyproject.toml is not newer than the venv's stamp.
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPOSITORY / name, checkout / name)
    shutil.copytree(REPOSITORY / "config", checkout / "config")
    stamp = tmp_path / "installed"  # stands for "this venv is installed": it is, by the test run
    stamp.touch()
    port = free_port()
    venv = Path(sys.executable).parent.parent
    command = [
        "make",
        "--no-print-directory",
        "run",
        f"VENV={venv}",
        f"STAMP={stamp}",
        "PYTHON=false",
    ]
    environ = clean_environment()
    environ["KMS_SERVER_PORT"] = str(port)
    deployment = Deployment(directory=checkout / "secrets", port=port)

    first = run_until_serving(command, checkout, environ, tmp_path / "first.log", deployment)
    assert "wrote dev certificates" in first
    assert "kms: initialised" in first
    secrets = {name: (checkout / "secrets" / name).read_bytes() for name in SECRETS}
    database = (checkout / "data" / "dev.db").stat().st_ino

    second = run_until_serving(command, checkout, environ, tmp_path / "second.log", deployment)
    assert "wrote dev certificates" not in second
    assert "initialised" not in second
    assert "already" not in second
    assert {name: (checkout / "secrets" / name).read_bytes() for name in SECRETS} == secrets
    assert (checkout / "data" / "dev.db").stat().st_ino == database


def run_until_serving(
    command: list[str], cwd: Path, environ: dict[str, str], log_path: Path, deployment: Deployment
) -> str:
    """Run ``make run`` until the server answers: the first run creates a key, the second
    finds it. Then stop it as Ctrl-C would and return its output."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        client = KMSClient(deployment)
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS + 30  # make and a 600k KDF first
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")
            if time.monotonic() > deadline:
                pytest.fail(f"make run did not serve:\n{log_path.read_text(errors='replace')}")
            if not all((deployment.directory / name).exists() for name in SECRETS):
                time.sleep(0.2)  # kms dev-certs has not finished yet
                continue
            try:
                keys = expect_json(client.get("/v1/kms/keys", timeout=2), 200)
                break
            except (requests.ConnectionError, requests.Timeout):  # not listening, or no worker yet
                time.sleep(0.2)
        if not keys:
            create_key(client, key_id="made-by-the-first-run")
        else:
            assert [key["key_id"] for key in keys] == ["made-by-the-first-run"]
        client.close()
    finally:
        stop_session(process)
    return log_path.read_text(encoding="utf-8", errors="replace")


def stop_session(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C: SIGINT to every process of the run's session (make, gunicorn and its workers);
    all of them must be gone afterwards."""
    try:
        os.killpg(process.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + PROCESS_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    pytest.fail("make run ignored Ctrl-C (SIGINT)")
