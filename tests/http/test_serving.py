"""How kms is served: the ways to start it, the settings that shape it, and SIGHUP.

Each test starts its own server (the package's shared server is used only where noted), because
each needs another command line or config.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kms.devcerts import Authority, certificate_pem, issue_certificate, private_key_pem
from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    STARTUP_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    clean_environment,
    create_key,
    expect_json,
    kms_command,
    prepare_deployment,
    unb64,
)

pytestmark = pytest.mark.slow


@contextmanager
def serving(
    deployment: Deployment, command: list[str]
) -> Iterator[tuple[ServerProcess, KMSClient]]:
    """Start, wait until it answers, yield; then SIGTERM, and the exit must be a clean 0."""
    server = ServerProcess(deployment, command)
    try:
        with closing(KMSClient(deployment)) as client:
            server.wait_until_serving(client)
            yield server, client
    finally:
        returncode = server.stop()
    assert returncode == 0, server.output()
    assert "Traceback" not in server.output()


def worker_pids(master: int) -> set[int]:
    """The live child processes of ``master``, read from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == master:
            children.add(int(entry.name))
    return children


def wait_for_workers(master: int, count: int, not_in: frozenset[int] = frozenset()) -> set[int]:
    """Poll until exactly ``count`` workers run, none of them in ``not_in``; fail at the limit."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while True:
        pids = worker_pids(master)
        if len(pids) == count and not pids & not_in:
            return pids
        if time.monotonic() > deadline:
            pytest.fail(f"workers of {master}: {pids}, wanted {count} new ones (old {not_in})")
        time.sleep(0.1)


def round_trip(client: KMSClient, key_id: str, ciphertext: str | None = None) -> str:
    """Decrypt ``ciphertext`` (made earlier) if given, and return a fresh one."""
    if ciphertext is not None:
        body = {"key_id": key_id, "ciphertext": ciphertext}
        assert unb64(expect_json(client.post("/v1/kms/decrypt", json=body), 200)["plaintext"]) == (
            b"kept across reloads"
        )
    body = {"key_id": key_id, "plaintext": b64(b"kept across reloads")}
    return expect_json(client.post("/v1/kms/encrypt", json=body), 200)["ciphertext"]


def served_certificate(deployment: Deployment) -> x509.Certificate:
    """The certificate the server presents on a new mutual-TLS connection."""
    context = ssl.create_default_context(cafile=str(deployment.ca_cert))
    context.load_cert_chain(str(deployment.client_cert), str(deployment.client_key))
    with (
        socket.create_connection(("127.0.0.1", deployment.port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def renew_server_certificate(deployment: Deployment) -> int:
    """Replace server.crt and server.key with a new pair from the same CA; return its serial."""
    authority = Authority(
        key=serialization.load_pem_private_key(deployment.ca_key.read_bytes(), password=None),  # type: ignore[arg-type]
        certificate=x509.load_pem_x509_certificate(deployment.ca_cert.read_bytes()),
    )
    key, certificate = issue_certificate(
        authority,
        "localhost",
        server=True,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1", "::1"),
    )
    (deployment.directory / "server.key").write_bytes(private_key_pem(key))
    (deployment.directory / "server.crt").write_bytes(certificate_pem(certificate))
    return certificate.serial_number


def test_workers_and_threads_settings_reach_gunicorn_and_sighup_reexecs_workers(
    certificates: Path, tmp_path: Path
) -> None:
    """``server.workers`` decides how many workers run, ``server.threads`` what gunicorn's own
    configuration report says (threads start on demand, so their number is not observable from
    outside without timing); SIGHUP replaces every worker, which load the renewed certificate,
    while the server keeps answering with the same master key."""
    deployment = prepare_deployment(
        tmp_path / "deployment", certificates, server={"workers": 3, "threads": 5}
    )
    with serving(deployment, kms_command("serve", "--log-level", "debug")) as (server, client):
        # kms's logger writes every message as one line, its newlines escaped as "\\n".
        output = server.output().replace("\\n", "\n")
        assert re.search(r"^  workers: 3$", output, re.MULTILINE), output
        assert re.search(r"^  threads: 5$", output, re.MULTILINE), output
        assert re.search(
            r"^  worker_class: kms\.server\.worker\.KMSWorker$", output, re.MULTILINE
        ), output
        master = server.process.pid
        before = wait_for_workers(master, 3)
        create_key(client, key_id="reloaded")
        ciphertext = round_trip(client, "reloaded")
        old_serial = served_certificate(deployment).serial_number
        # docs/operations.md: a reload restarts the workers, which load the files as they are.
        renewed = renew_server_certificate(deployment)

        server.process.send_signal(signal.SIGHUP)
        after = wait_for_workers(master, 3, not_in=frozenset(before))

        assert server.process.poll() is None
        assert after.isdisjoint(before)
        assert renewed != old_serial
        assert served_certificate(deployment).serial_number == renewed
        # New workers, same master key: the old ciphertext decrypts, new ones are made.
        round_trip(client, "reloaded", ciphertext)
        with closing(KMSClient(deployment)) as fresh:  # new connections reach the new workers
            round_trip(fresh, "reloaded", ciphertext)
    assert "Handling signal: hup" in server.output()


def test_plain_gunicorn_with_the_kms_config_serves(certificates: Path, tmp_path: Path) -> None:
    deployment = prepare_deployment(tmp_path / "deployment", certificates)
    gunicorn = str(Path(kms_command()[0]).with_name("gunicorn"))
    with serving(deployment, [gunicorn, "-c", "python:kms.gunicorn_conf"]) as (server, client):
        assert expect_json(client.get("/v1/kms/keys"), 200) == []
        assert len(wait_for_workers(server.process.pid, 2)) == 2


def test_kms_serve_passes_extra_arguments_to_gunicorn(certificates: Path, tmp_path: Path) -> None:
    deployment = prepare_deployment(
        tmp_path / "deployment", certificates
    )  # the config asks for 2 workers
    access_log = tmp_path / "access.log"
    command = kms_command("serve", "--workers", "1", "--access-logfile", str(access_log))
    with serving(deployment, command) as (server, client):
        assert len(wait_for_workers(server.process.pid, 1)) == 1
        response = client.get("/v1/kms/keys")
        expect_json(response, 200)
        request_id = response.headers["X-Request-Id"]
        deadline = time.monotonic() + 10
        while f"request_id={request_id} " not in access_log.read_text(encoding="utf-8"):
            assert time.monotonic() < deadline, access_log.read_text(encoding="utf-8")
            time.sleep(0.05)
    assert f"request_id={request_id} " not in server.output()


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))  # TEST-NET-3: only picks the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_the_shared_server_listens_on_localhost_only(server: ServerProcess) -> None:
    """The harness's config sets no host: the default binds 127.0.0.1 and nothing else."""
    port = server.deployment.port
    listening = re.findall(r"Listening at: (\S+) ", server.output())
    assert listening == [f"https://127.0.0.1:{port}"]
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, port), timeout=10).close()
    socket.create_connection(("127.0.0.1", port), timeout=10).close()  # the control


def test_the_dev_server_certificate_names_localhost_and_both_loopbacks(
    certificates: Path,
) -> None:
    certificate = x509.load_pem_x509_certificate((certificates / "server.crt").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_serving_on_ipv6_loopback_verifies_as_1(certificates: Path, tmp_path: Path) -> None:
    """``server.host: '::1'`` binds the IPv6 loopback, and a client that checks the server's
    certificate against the address ``::1`` (requests does) accepts it."""
    deployment = prepare_deployment(tmp_path / "deployment", certificates, server={"host": "::1"})
    ipv6 = Deployment(directory=deployment.directory, port=deployment.port)

    class IPv6Client(KMSClient):
        def __init__(self, deployment: Deployment) -> None:
            super().__init__(deployment)
            self.base_url = f"https://[::1]:{deployment.port}"

    server = ServerProcess(ipv6, kms_command("serve"))
    try:
        with closing(IPv6Client(ipv6)) as client:
            server.wait_until_serving(client)
            assert expect_json(client.get("/v1/kms/keys"), 200) == []
    finally:
        assert server.stop() == 0, server.output()
    # gunicorn names an IPv6 TLS listener "http://" in this line; the address is what matters.
    assert re.search(rf"Listening at: https?://\[::1\]:{deployment.port} ", server.output())


def test_kms_serve_without_a_terminal_refuses_to_prompt(certificates: Path, tmp_path: Path) -> None:
    """No passphrase file configured and stdin is not a terminal: one line, status 1, no worker."""
    deployment = prepare_deployment(tmp_path / "deployment", certificates)
    text = deployment.config.read_text(encoding="utf-8")
    text = re.sub(r"^kms:\n  master_passphrase_file: .*\n", "", text, flags=re.MULTILINE)
    deployment.config.write_text(text, encoding="utf-8")
    assert "master_passphrase_file" not in text
    result = subprocess.run(
        kms_command("serve"),
        env=clean_environment(deployment.config),
        cwd=deployment.directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    kms_lines = [line for line in result.stdout.splitlines() if line.startswith("kms: ")]
    assert kms_lines == [
        "kms: no passphrase file is configured (kms.master_passphrase_file) and stdin is not a "
        "terminal to prompt on"
    ]
    assert "Booting worker" not in result.stdout
    assert "Listening at" not in result.stdout
    assert "Traceback" not in result.stdout
    assert os.listdir(deployment.directory).count("kms.db") == 1  # the keystore was not touched


@pytest.mark.parametrize("command", [[], ["init"], ["serve"], ["dev-certs"]], ids=repr)
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [*kms_command(*command), "--help"],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: kms")
