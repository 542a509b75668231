"""Running a real kms server for the HTTP tests: dev certificates, config, database, gunicorn.

Everything here is the real thing: kms's dev-certs code writes the certificates, ``kms serve`` runs
gunicorn with mutual TLS, ``requests`` speaks HTTPS with the client certificate. The database is
initialised through the library, with the production PBKDF2 cost: a server started from a config
file refuses stored KDF parameters below 600,000 iterations, and no setting can lower that floor.
"""

from __future__ import annotations

import base64
import fcntl
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from kms import devcerts
from kms.crypto.kdf import MIN_ITERATIONS
from kms.master import init_database
from kms.settings import Settings
from tests.helpers.config import write_config

#: What the server accepts: the production floor (a derivation takes about 0.4 s here).
TEST_ITERATIONS = MIN_ITERATIONS
# Safety limits only: no test asserts how long anything took. A start is a second or two on a
# quiet machine; the limit is generous because `make test` runs several tests (and servers) at
# once on two cores, and other work may share the machine.
STARTUP_TIMEOUT_SECONDS = 60
REQUEST_TIMEOUT_SECONDS = 60
PROCESS_TIMEOUT_SECONDS = 60
#: An operator command (init, backup, rekey, upgrade...) derives the master key at the
#: production cost, some of them twice.
COMMAND_TIMEOUT_SECONDS = 120

JSON = "application/json"
#: How often a wait looks again at what it waits for.
POLL_SECONDS = 0.05


def wait_until(
    condition: Callable[[], object],
    what: str,
    seconds: float = PROCESS_TIMEOUT_SECONDS,
    detail: Callable[[], str] = str,
) -> None:
    """Poll ``condition`` until it is true; fail, naming ``what`` and adding ``detail()``, if it
    is still false after ``seconds``. A wait for an event, never a measurement: the limit only
    turns a hang into a failure."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {seconds} s\n{detail()}", pytrace=False)
        time.sleep(POLL_SECONDS)


def kms_command(*args: str) -> list[str]:
    """The installed ``kms`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("kms")
    assert script.is_file(), f"no kms console script next to {sys.executable}"
    return [str(script), *args]


def clean_environment(config: Path | None = None) -> dict[str, str]:
    """This process's environment without any ``KMS_*`` override, plus ``KMS_CONFIG``.

    A developer's own KMS_* variables must not change what the tests start.
    """
    environ = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
    if config is not None:
        environ["KMS_CONFIG"] = str(config)
    return environ


def run_kms(
    *args: str,
    config: Path | None = None,
    cwd: Path | None = None,
    timeout: float = COMMAND_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run a ``kms`` command to completion as an operator would, with the config file
    ``config`` and no terminal (stdin is /dev/null); stdout and stderr are captured apart."""
    return subprocess.run(
        kms_command(*args),
        env=clean_environment(config),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_kms(
    *args: str, config: Path | None = None, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Start a ``kms`` command as ``run_kms`` runs it, without waiting: for commands that run at
    once. ``communicate(timeout=COMMAND_TIMEOUT_SECONDS)`` collects stdout and stderr."""
    return subprocess.Popen(
        kms_command(*args),
        env=clean_environment(config),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


#: Ports for the servers the tests start: a block per test process (each pytest-xdist worker, or
#: a pytest run without xdist), all below the kernel's ephemeral range (32768-60999 by default),
#: where the client side of every connection gets its port. Between ``free_port``'s probe and the
#: server's bind there are a few seconds in which another process could take the same port, and
#: ``kms serve`` refuses a taken port at once. So no two processes share a block: a block chosen
#: by the xdist worker's name alone was shared by all runs at once (every run's gw0, and every
#: run without xdist, such as each ``make mutants`` copy's), and their server starts lost races.
#: Each process claims the first block whose lock file it can ``flock``, and holds it until it
#: exits (the kernel releases it even on SIGKILL, so no stale claim outlives a killed run).
PORT_BLOCK_START = 20_000
PORT_BLOCK_SIZE = 250  # enough for the servers one process starts while TIME_WAIT (60 s) lasts
_PORT_BLOCKS = (32_768 - PORT_BLOCK_START) // PORT_BLOCK_SIZE
_PORT_LOCKS = Path(tempfile.gettempdir()) / f"kms-test-ports-{os.getuid()}"
_claimed: dict[int, int] = {}  # process id -> its block; a forked child claims one of its own
_next_port_offset = random.randrange(PORT_BLOCK_SIZE)


def _port_block() -> int:
    """The block this process holds, claimed on first use. If every block is held, one chosen
    by the process id, shared, as a last resort (the probe still skips what is listening)."""
    pid = os.getpid()
    if pid in _claimed:
        return _claimed[pid]
    _PORT_LOCKS.mkdir(mode=0o700, exist_ok=True)
    start = pid % _PORT_BLOCKS  # processes claiming at the same moment try different blocks first
    for step in range(_PORT_BLOCKS):
        block = (start + step) % _PORT_BLOCKS
        fd = os.open(_PORT_LOCKS / f"{block}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _claimed[pid] = block  # fd stays open, unused: the claim lasts as long as the process
        return block
    return start


def free_port() -> int:
    """A port of this process's block that nothing listens on (probed by binding it)."""
    global _next_port_offset
    block = PORT_BLOCK_START + _port_block() * PORT_BLOCK_SIZE
    for _ in range(PORT_BLOCK_SIZE):
        port = block + _next_port_offset
        _next_port_offset = (_next_port_offset + 1) % PORT_BLOCK_SIZE
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # someone else's, or still in TIME_WAIT: the next one
        return port
    raise RuntimeError(f"no free port in {block}-{block + PORT_BLOCK_SIZE - 1}")


@dataclass(frozen=True)
class Deployment:
    """The files of one kms instance, all inside ``directory``."""

    directory: Path
    port: int

    @property
    def config(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def database(self) -> Path:
        return self.directory / "kms.db"

    @property
    def passphrase_file(self) -> Path:
        return self.directory / "master.key"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    @property
    def audit_log(self) -> Path:
        return self.directory / "audit.log"

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def write_dev_certificates(directory: Path) -> None:
    """What ``kms dev-certs DIRECTORY`` writes, by the function it calls, in this process.

    Dozens of tests need a deployment's files; a ``kms`` process each (an interpreter start and
    kms's imports) was a large share of the suite's CPU time. The command itself is tested in
    test_first_run.py."""
    devcerts.write_dev_certificates(directory)


def initialise_database(database: Path | str, passphrase_file: Path) -> None:
    init_database(
        Settings(
            database_dsn=str(database),
            master_passphrase_file=passphrase_file,
            kdf_iterations=TEST_ITERATIONS,
        )
    )


def prepare_deployment(
    directory: Path, certificates: Path | None = None, **sections: Mapping[str, Any]
) -> Deployment:
    """A deployment in ``directory``: dev certificates and a passphrase file (copied from
    ``certificates``, a directory of ``kms dev-certs``'s files, or made anew), a config on a free
    port (with ``sections`` merged in, as ``write_config`` merges them), an initialised
    database."""
    if certificates is None:
        write_dev_certificates(directory)
    else:
        shutil.copytree(certificates, directory, dirs_exist_ok=True)
    deployment = Deployment(directory=directory, port=free_port())
    write_config(deployment.config, directory=directory, port=deployment.port, **sections)
    initialise_database(deployment.database, deployment.passphrase_file)
    return deployment


def new_session(cert: Path, key: Path, ca_cert: Path) -> requests.Session:
    session = requests.Session()
    # trust_env would let REQUESTS_CA_BUNDLE replace `verify` and a proxy variable reroute us.
    session.trust_env = False
    session.cert = (str(cert), str(key))
    session.verify = str(ca_cert)
    return session


class KMSClient:
    """A requests.Session with the client certificate, and the server's base URL."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.base_url = deployment.base_url
        self.session = self.new_session()

    def new_session(self) -> requests.Session:
        deployment = self.deployment
        return new_session(deployment.client_cert, deployment.client_key, deployment.ca_cert)

    def request(
        self, method: str, path: str, session: requests.Session | None = None, **kwargs: Any
    ) -> requests.Response:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT_SECONDS)
        return (session or self.session).request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self.session.close()


class ServerProcess:
    """``kms serve`` (or ``command``: ``kms serve`` with arguments, plain gunicorn) as a child
    process with the deployment's config, its stdout and stderr going to ``deployment.log``."""

    def __init__(self, deployment: Deployment, command: list[str] | None = None) -> None:
        self.deployment = deployment
        with deployment.log.open("ab") as log:
            self.process = subprocess.Popen(
                command or kms_command("serve"),
                env=clean_environment(deployment.config),
                cwd=deployment.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.deployment.log.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, needle: str) -> str:
        """The first line of the server's output that holds ``needle``, once there is one."""
        found: list[str] = []

        def logged() -> bool:
            found.extend(line for line in self.output().splitlines() if needle in line)
            return bool(found)

        wait_until(logged, f"a log line with {needle!r}", detail=self.output)
        return found[0]

    def wait_until_serving(self, client: KMSClient, path: str = "/v1/kms/keys?limit=1") -> None:
        """Poll with an mTLS request (``path``) until the server answers; fail with the log
        otherwise."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"kms serve exited with {self.process.returncode}:\n{self.output()}",
                    pytrace=False,
                )
            try:
                response = client.get(path, timeout=5)
            except (requests.ConnectionError, requests.Timeout):
                # Not listening yet, or listening (gunicorn's master binds first) while no worker
                # has accepted yet: on a busy machine that can outlast one request's timeout.
                time.sleep(0.1)
                continue
            if response.status_code == 200:
                return
            pytest.fail(f"first request answered {response.status_code}: {response.text}")
        self.process.kill()
        self.process.wait()
        pytest.fail(f"kms serve did not answer within the limit:\n{self.output()}", pytrace=False)

    def stop(self) -> int:
        """SIGTERM and wait: a clean shutdown exits 0."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=PROCESS_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"kms serve ignored SIGTERM:\n{self.output()}", pytrace=False)
        return self.process.returncode

    def access_log_line(self, request_id: str) -> str:
        """The access log line of one request, found by the id the response carried."""
        needle = f"request_id={request_id} "
        deadline = time.monotonic() + 10
        while True:
            lines = [line for line in self.output().splitlines() if needle in line]
            if lines:
                assert len(lines) == 1, lines
                return lines[0]
            if time.monotonic() > deadline:
                pytest.fail(f"no access log line for request {request_id}:\n{self.output()}")
            time.sleep(0.05)


# -- responses ------------------------------------------------------------------------------


def expect_json(response: requests.Response, status: int) -> Any:
    """Assert the status, the JSON content type and no leaked traceback; return the body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("Content-Type") == JSON, response.headers
    assert "Traceback" not in response.text
    return response.json()


def expect_error(response: requests.Response, status: int, message: str | None = None) -> str:
    """Assert an error response of the one shape ``{"error": "<message>"}``."""
    assert 400 <= status < 500
    body = expect_json(response, status)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body
    if message is not None:
        assert body["error"] == message
    return body["error"]


def expect_no_content(response: requests.Response) -> None:
    assert response.status_code == 204, (response.status_code, response.text)
    assert response.content == b""


# -- data -----------------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def unique_key_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_key(client: KMSClient, **fields: str) -> dict[str, Any]:
    return expect_json(client.post("/v1/kms/keys", json=fields), 201)


# -- the database, read behind the server's back ----------------------------------------------

SNAPSHOT_QUERIES = {
    "keys": "SELECT key_id, purpose, algorithm, state, latest_version, incarnation, created_at, "
    "updated_at, mac, description, labels, min_decryption_version, min_available_version, "
    "deletion_allowed, pending_deletion_at, use_attempts_while_pending, last_use_attempt "
    "FROM keys ORDER BY key_id",
    "key_versions": "SELECT key_id, version, wrapped_key, public_key, created_at, mac "
    "FROM key_versions ORDER BY key_id, version",
    "kms_metadata": "SELECT name, value FROM kms_metadata ORDER BY name",
}


def database_rows(database: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        return {
            table: connection.execute(query).fetchall() for table, query in SNAPSHOT_QUERIES.items()
        }


@contextmanager
def database_unchanged(database: Path) -> Iterator[None]:
    before = database_rows(database)
    assert before["kms_metadata"], "the snapshot must see the initialised database"
    yield
    assert database_rows(database) == before
