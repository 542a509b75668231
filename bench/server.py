"""A real kms server for the benchmark: ``kms serve`` with the production gunicorn settings.

The configuration is what a deployment gets by default (workers, threads, limits, keep-alive come
from ``kms.gunicorn_conf``), plus what the issue measures with: an authorization policy and an
audit log switched on. Only the things a run varies on purpose are set: the database, the key
cache size, workers and threads for the defaults study, and ``server.tls_context_cache`` for the
new-connection comparison. No rate limit: it would measure the limit, not the server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.load import LOOPBACK, BenchError, Client, encode_request, request_once
from bench.scenarios import small_encrypt_request

ROOT = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 60.0
STOP_SECONDS = 30.0

POLICY = """\
# The benchmark's caller (the dev client certificate) may use the keys the benchmark made.
clients:
  orchestrator:
    - operations: ["keys:create", "keys:read", "encrypt", "decrypt", "datakey", "sign", "verify"]
      keys: ["bench-*"]
"""


@dataclass(frozen=True)
class ServerOptions:
    database_dsn: str
    passphrase_file: Path
    workers: int | None = None  # None: the configured default
    threads: int | None = None
    key_cache_size: int | None = None
    key_cache_bytes: int | None = None
    tls_context_cache: bool = True
    #: ``kms.master_key`` settings (``bench.hsm``): the pkcs11 backend instead of the passphrase.
    master_key: tuple[tuple[str, str], ...] = ()
    #: Added to the server's environment (``SOFTHSM2_CONF`` for the pkcs11 backend).
    environment: tuple[tuple[str, str], ...] = ()


def kms_command() -> str:
    script = Path(sys.executable).with_name("kms")
    found = str(script) if script.is_file() else shutil.which("kms")
    if found is None:
        raise BenchError("no kms command next to this python or on PATH (make install)")
    return found


def make_certificates(directory: Path) -> None:
    # Our own command with our own arguments: nothing untrusted reaches it.
    subprocess.run(  # noqa: S603
        [kms_command(), "dev-certs", str(directory)], check=True, capture_output=True
    )


def free_port() -> int:
    import socket

    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _config(directory: Path, port: int, options: ServerOptions) -> str:
    server = [
        f"  port: {port}",
        f'  server_cert: "{directory / "server.crt"}"',
        f'  server_key: "{directory / "server.key"}"',
        f'  ca_cert: "{directory / "ca.pem"}"',
    ]
    if options.workers is not None:
        server.append(f"  workers: {options.workers}")
    if options.threads is not None:
        server.append(f"  threads: {options.threads}")
    if not options.tls_context_cache:
        server.append("  tls_context_cache: false")
    kms = [f'  master_passphrase_file: "{options.passphrase_file}"']
    if options.master_key:
        kms.append("  master_key:")
        kms += [f'    {name}: "{value}"' for name, value in options.master_key]
    if options.key_cache_size is not None:
        kms.append(f"  key_cache_size: {options.key_cache_size}")
    if options.key_cache_bytes is not None:
        kms.append(f"  key_cache_bytes: {options.key_cache_bytes}")
    return "\n".join(
        [
            "server:",
            *server,
            "kms:",
            *kms,
            "database:",
            f'  dsn: "{options.database_dsn}"',
            "authorization:",
            f'  policy_file: "{directory / "policy.yaml"}"',
            "audit:",
            f'  path: "{directory / "audit.log"}"',
            "",
        ]
    )


def environment(config: Path, options: ServerOptions | None = None) -> dict[str, str]:
    """This environment without the developer's KMS_* overrides, plus KMS_CONFIG."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
    environ["KMS_CONFIG"] = str(config)
    if options is not None:
        environ.update(options.environment)
    return environ


def write_config(directory: Path, port: int, options: ServerOptions) -> Path:
    """The kms configuration file for a server on ``port`` (certificates already in
    ``directory``), and the policy it names."""
    (directory / "policy.yaml").write_text(POLICY, encoding="utf-8")
    config = directory / f"config-{port}.yaml"
    config.write_text(_config(directory, port, options), encoding="utf-8")
    return config


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    client: Client
    log: Path

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the children of the master (``kms serve`` execs gunicorn)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return sorted(int(pid) for pid in children.read_text().split())

    def connections_per_worker(self) -> list[int]:
        """How many of the connections established on the server's port each worker holds;
        empty if the server is gone (a run that failed)."""
        try:
            return connections_per_process(self.worker_pids(), self.client.port)
        except FileNotFoundError:
            return []

    def worker_rss_mb(self) -> list[float]:
        sizes = []
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        return sizes


_TCP_ESTABLISHED = "01"


def connections_per_process(pids: list[int], port: int) -> list[int]:
    """For each process, how many established TCP connections on local ``port`` it holds open
    (Linux: the sockets among ``/proc/PID/fd`` matched with ``/proc/net/tcp`` and ``tcp6``)."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == _TCP_ESTABLISHED:
                    established.add(f"socket:[{fields[9]}]")
    held = []
    for pid in pids:
        sockets = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                sockets.add(os.readlink(fd))
            except OSError:
                continue  # closed since it was listed
        held.append(len(sockets & established))
    return held


@contextmanager
def running_server(directory: Path, options: ServerOptions) -> Iterator[RunningServer]:
    """Start ``kms serve`` (certificates already in ``directory``), wait until it answers."""
    with _serving(directory, options, [kms_command(), "serve"], {}) as server:
        yield server


@contextmanager
def running_floor(directory: Path, options: ServerOptions, app: str) -> Iterator[RunningServer]:
    """Serve the floor application ``app`` (``bench.floor``) with kms's gunicorn settings for
    ``options`` (``bench/floor_conf.py``), and wait until it answers."""
    command = [sys.executable, "-m", "gunicorn", "-c", "python:bench.floor_conf"]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    extra = {"BENCH_FLOOR_APP": app, "PYTHONPATH": path}
    with _serving(directory, options, command, extra, probe=small_encrypt_request()) as server:
        yield server


@contextmanager
def _serving(
    directory: Path,
    options: ServerOptions,
    command: list[str],
    extra: dict[str, str],
    probe: bytes | None = None,
) -> Iterator[RunningServer]:
    port = free_port()
    config = write_config(directory, port, options)
    log = directory / f"server-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - our command, our arguments
            command,
            env=environment(config, options) | extra,
            cwd=directory,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    client = Client(
        port=port,
        ca=directory / "ca.pem",
        cert=directory / "client.crt",
        key=directory / "client.key",
    )
    server = RunningServer(process, client, log)
    try:
        _wait_until_serving(server, options, probe or encode_request("GET", "/healthz"))
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_serving(server: RunningServer, options: ServerOptions, probe: bytes) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-2000:]
            code = server.process.returncode
            raise BenchError(f"the server ({server.log.name}) exited with {code}:\n{tail}")
        try:
            status, _ = request_once(server.client, probe)
        except OSError:
            time.sleep(0.1)
            continue
        if status == 200:
            break
    else:
        raise BenchError(f"the server ({server.log.name}) did not answer within 60 s")
    # Every worker must be up before the clock starts (the first answers come from one).
    expected = options.workers or _configured_workers()
    while time.monotonic() < deadline:
        if len(server.worker_pids()) >= expected:
            return
        time.sleep(0.1)
    raise BenchError("kms serve did not start all its workers within 60 s")


def _configured_workers() -> int:
    from kms.settings import Settings

    return Settings(database_dsn="unused").workers
