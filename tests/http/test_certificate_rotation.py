"""Certificate rotation without a restart or a failed request, over real gunicorn.

Eight client threads call kms in a loop, each request on a new connection (so every request is a
new handshake) while the server's certificate and key are replaced by renaming new files into
place, the certificate first: for a while the pair on disk does not match, and the server must
keep its previous pair. Then the CA bundle is replaced by one that also holds a new CA, and a
client with a certificate from the new CA gets in. Waits below are bounded polls, not assertions
about time.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kms.devcerts import (
    Authority,
    certificate_pem,
    issue_certificate,
    new_authority,
    private_key_pem,
)
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    new_session,
    prepare_deployment,
    wait_until,
)
from tests.helpers.identities import running_server

pytestmark = pytest.mark.slow

THREADS = 8
WAIT_LIMIT_SECONDS = 30  # a safety limit for the polls, never asserted on


def replace_file(path: Path, data: bytes) -> None:
    """Write beside the file, then rename into place: readers see the old or the new file."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def dev_authority(deployment: Deployment) -> Authority:
    key = serialization.load_pem_private_key(
        (deployment.directory / "ca.key").read_bytes(), password=None
    )
    certificate = x509.load_pem_x509_certificate(deployment.ca_cert.read_bytes())
    return Authority(key=key, certificate=certificate)  # type: ignore[arg-type]


def presented_serial(deployment: Deployment) -> int:
    """The serial number of the certificate a new connection is shown."""
    context = ssl.create_default_context(cafile=str(deployment.ca_cert))
    context.load_cert_chain(str(deployment.client_cert), str(deployment.client_key))
    with (
        socket.create_connection(("127.0.0.1", deployment.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        time.sleep(0.1)


def test_certificates_and_ca_rotate_without_a_failed_request(tmp_path: Path) -> None:
    deployment = prepare_deployment(tmp_path / "kms")
    with running_server(deployment) as server:
        client = KMSClient(deployment)
        stop = threading.Event()
        failures: list[str] = []
        answered = [0]
        lock = threading.Lock()

        def call_in_a_loop() -> None:
            while not stop.is_set():
                session = client.new_session()  # a new connection, so a new handshake
                try:
                    response = client.get(
                        "/v1/kms/keys", session=session, params={"limit": 1}, timeout=30
                    )
                    with lock:
                        if response.status_code == 200:
                            answered[0] += 1
                        else:
                            failures.append(f"{response.status_code} {response.text}")
                except requests.RequestException as error:
                    with lock:
                        failures.append(repr(error))
                finally:
                    session.close()

        threads = [threading.Thread(target=call_in_a_loop) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        try:
            old_serial = presented_serial(deployment)
            authority = dev_authority(deployment)
            new_key, new_cert = issue_certificate(
                authority,
                "localhost",
                server=True,
                dns_names=("localhost",),
                ip_addresses=("127.0.0.1", "::1"),
            )
            server_cert = deployment.directory / "server.crt"
            server_key = deployment.directory / "server.key"

            # The certificate first: until the key follows, the files on disk do not match.
            replace_file(server_cert, certificate_pem(new_cert))
            wait_for(
                lambda: "TLS files refused" in server.output(),
                "the server to notice and refuse the half-replaced pair",
            )
            assert presented_serial(deployment) == old_serial  # still the old, whole pair
            replace_file(server_key, private_key_pem(new_key))
            wait_for(
                lambda: presented_serial(deployment) == new_cert.serial_number,
                "new connections to present the new certificate",
            )

            # A new CA: the bundle holds both, so old and new clients get in.
            new_ca = new_authority("kms-dev-ca-2")
            replace_file(
                deployment.ca_cert,
                certificate_pem(authority.certificate) + certificate_pem(new_ca.certificate),
            )
            client_key, client_cert = issue_certificate(
                new_ca, "orchestrator-2", server=False, dns_names=("orchestrator-2",)
            )
            (tmp_path / "client2.crt").write_bytes(certificate_pem(client_cert))
            (tmp_path / "client2.key").write_bytes(private_key_pem(client_key))
            # The server's own certificate is still from the first CA: the client trusts it.
            new_client = new_session(
                tmp_path / "client2.crt", tmp_path / "client2.key", deployment.ca_cert
            )

            def new_ca_client_gets_in() -> bool:
                try:
                    response = new_client.get(
                        deployment.base_url + "/v1/kms/keys", params={"limit": 1}, timeout=10
                    )
                except requests.RequestException:
                    return False
                return response.status_code == 200

            wait_for(new_ca_client_gets_in, "a client of the new CA to be accepted")
            new_client.close()
            with lock:
                before = answered[0]
            wait_for(lambda: answered[0] > before + THREADS, "the loop to keep going")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            client.close()
        assert failures == []
        assert answered[0] > 0
        assert "TLS files reloaded" in server.output()


def worker_pids(output: str) -> set[int]:
    """The workers gunicorn has booted so far, from its "Booting worker with pid: N" lines."""
    return {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", output)}


def reload_and_wait(server: ServerProcess) -> None:
    """SIGHUP, then wait until every worker from before it has exited (gunicorn replaces them
    all), so that every new connection reaches a worker started by this reload."""
    old = worker_pids(server.output())
    server.process.send_signal(signal.SIGHUP)

    def old_workers_gone() -> bool:
        output = server.output()
        if server.process.poll() is not None:
            pytest.fail(f"the master exited on SIGHUP:\n{output}", pytrace=False)
        return (
            all(f"Worker exiting (pid: {pid})" in output for pid in old)
            and len(worker_pids(output) - old) >= 2
        )

    wait_until(
        old_workers_gone, "the workers from before SIGHUP to be replaced", detail=server.output
    )


def test_sighup_during_a_mismatched_swap_keeps_the_workers_and_the_old_pair(
    tmp_path: Path,
) -> None:
    deployment = prepare_deployment(tmp_path / "kms")
    with running_server(deployment) as server:
        client = KMSClient(deployment)
        try:
            old_serial = presented_serial(deployment)
            authority = dev_authority(deployment)
            new_key, new_cert = issue_certificate(
                authority,
                "localhost",
                server=True,
                dns_names=("localhost",),
                ip_addresses=("127.0.0.1", "::1"),
            )
            # Half a swap: the new certificate beside the old key, and a policy reload then.
            replace_file(deployment.directory / "server.crt", certificate_pem(new_cert))
            reload_and_wait(server)
            refusals = [
                line for line in server.output().splitlines() if "TLS files refused" in line
            ]
            assert len(refusals) == 1, server.output()
            assert "server.key" in refusals[0] and "does not match" in refusals[0]
            # The new workers serve with the old, whole pair, and say nothing more about it.
            assert presented_serial(deployment) == old_serial
            assert client.get("/v1/kms/keys", params={"limit": 1}).status_code == 200
            assert (
                len([line for line in server.output().splitlines() if "TLS files refused" in line])
                == 1
            )

            # The swap completed: the workers pick it up, and so does the next reload.
            replace_file(deployment.directory / "server.key", private_key_pem(new_key))
            wait_for(
                lambda: presented_serial(deployment) == new_cert.serial_number,
                "new connections to present the new certificate",
            )
            reload_and_wait(server)
            assert presented_serial(deployment) == new_cert.serial_number
            assert client.get("/v1/kms/keys", params={"limit": 1}).status_code == 200
        finally:
            client.close()
        assert "Worker failed to boot" not in server.output()
