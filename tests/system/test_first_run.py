"""What a newcomer meets first: the announced port, a taken port, and the commands' help."""

from __future__ import annotations

import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers.config import write_config
from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    ServerProcess,
    clean_environment,
    free_port,
    initialise_database,
    kms_command,
    run_kms,
    write_dev_certificates,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


def test_the_server_announces_the_port_it_listens_on(server: ServerProcess) -> None:
    port = server.deployment.port
    assert f"kms: serving https://localhost:{port}" in server.output()


def test_a_taken_port_is_one_line_not_gunicorns_retries(tmp_path: Path) -> None:
    write_dev_certificates(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(tmp_path / "config.yaml", directory=tmp_path, port=port)
        initialise_database(tmp_path / "kms.db", tmp_path / "master.key")
        result = subprocess.run(
            kms_command("serve"),
            env=clean_environment(config),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT_SECONDS,
            check=False,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "Booting worker" not in output
    assert "Connection in use" not in output  # gunicorn never tried: no retries
    # One line of kms's own; besides it only gunicorn's timestamped log lines ([INFO]/[WARNING]).
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("kms: ")]
    assert line == (
        f"kms: server.port: 127.0.0.1:{port} is already in use by another process ({config})"
    )
    assert all(line.startswith(("kms: ", "[")) for line in result.stderr.splitlines() if line), (
        output
    )


def test_a_free_port_is_not_mistaken_for_a_taken_one(tmp_path: Path) -> None:
    # A port just closed (TIME_WAIT or not) must not be refused: the probe binds as gunicorn does.
    write_dev_certificates(tmp_path)
    port = free_port()
    config = write_config(tmp_path / "config.yaml", directory=tmp_path, port=port)
    initialise_database(tmp_path / "kms.db", tmp_path / "master.key")

    deployment = Deployment(directory=tmp_path, port=port)
    assert deployment.config == config
    server = ServerProcess(deployment)
    client = KMSClient(deployment)
    try:
        server.wait_until_serving(client)
    finally:
        client.close()
        assert server.stop() == 0


def test_kms_help_names_the_configuration_variables() -> None:
    result = run_kms("--help")
    assert result.returncode == 0, result.stderr
    assert "KMS_CONFIG" in result.stdout
    assert "KMS_ENV" in result.stdout


def test_dev_certs_help_tells_the_real_file_modes(tmp_path: Path) -> None:
    help_text = " ".join(run_kms("dev-certs", "--help").stdout.split())
    assert run_kms("dev-certs", str(tmp_path / "secrets")).returncode == 0
    written = {
        path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "secrets").iterdir()
    }
    told = {
        name: int(mode, 8)
        for names, mode in re.findall(r"((?:[a-z]+\.[a-z]+(?:,? )?)+) \((0[0-7]{3})\)", help_text)
        for name in re.findall(r"[a-z]+\.[a-z]+", names)
    }
    assert told == written, help_text


def test_make_run_installs_no_test_tools(tmp_path: Path) -> None:
    # What make would do in a clean clone (a venv that does not exist yet), without doing it.
    result = subprocess.run(
        ["make", "-n", "run", f"VENV={tmp_path / 'venv'}", f"SECRETS={tmp_path / 'secrets'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if "pip install" in line]
    assert any(line.endswith("install --quiet -e .") for line in installs), installs
    assert not any("[test" in line for line in installs), installs
    assert "8080" not in result.stdout  # the port comes from the settings at run time


def test_a_config_naming_the_credentials_directory_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What systemd's LoadCredential= does: the files in a private directory named by
    # $CREDENTIALS_DIRECTORY, which the config (as config/config.prod.yaml does) names them under.
    credentials = tmp_path / "credentials"
    write_dev_certificates(credentials)
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    config = state / "config.yaml"
    config.write_text(
        "server:\n"
        f"  port: {port}\n"
        '  server_cert: "${CREDENTIALS_DIRECTORY}/server.crt"\n'
        '  server_key: "${CREDENTIALS_DIRECTORY}/server.key"\n'
        '  ca_cert: "${CREDENTIALS_DIRECTORY}/ca.pem"\n'
        "kms:\n"
        '  master_passphrase_file: "${CREDENTIALS_DIRECTORY}/master.key"\n'
        "database:\n"
        f'  dsn: "{state / "kms.db"}"\n',
        encoding="utf-8",
    )
    initialise_database(state / "kms.db", credentials / "master.key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))

    server = ServerProcess(Deployment(directory=state, port=port))
    client = KMSClient(Deployment(directory=credentials, port=port))
    try:
        server.wait_until_serving(client)
    finally:
        client.close()
        assert server.stop() == 0


def test_the_readme_names_the_prerequisites_before_its_first_request() -> None:
    """Merge leftovers in any document: tests/deploy/test_docs.py."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Try it" in readme
    for prerequisite in ("Python 3.11", "make", "curl", "openssl"):
        assert prerequisite in readme.split("## Try it", 1)[0], prerequisite
