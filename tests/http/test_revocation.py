"""Revocation by CRL (``server.crl_file``), attacked over real gunicorn with real certificates.

A client whose certificate the CRL revokes is refused at the handshake while another client of the
same CA is served; a CRL replaced on disk revokes one more without a restart (noticed by the
workers on their own, and by the workers of a SIGHUP); a CRL replaced by garbage is refused with
one log line, and the CRL in force keeps revoking, across a SIGHUP too; a client of a CA that has
no CRL in the file is refused (the check fails closed).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from kms.devcerts import (
    Authority,
    certificate_pem,
    crl_pem,
    issue_certificate,
    issue_crl,
    new_authority,
    private_key_pem,
)
from tests.helpers.harness import Deployment, prepare_deployment, wait_until
from tests.helpers.identities import issue_client_certificate, running_server
from tests.http.test_certificate_rotation import (
    dev_authority,
    reload_and_wait,
    replace_file,
)

pytestmark = pytest.mark.slow

REQUEST = b"GET /v1/kms/keys?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def attempt(deployment: Deployment, cert: Path, key: Path) -> str:
    """One request on a new connection: the status line, or the TLS error that ended it."""
    context = ssl.create_default_context(cafile=str(deployment.ca_cert))
    context.load_cert_chain(str(cert), str(key))
    try:
        with (
            socket.create_connection(("127.0.0.1", deployment.port), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            # With TLS 1.3 the server judges the client's certificate after the client's side of
            # the handshake is done: a refusal arrives as an alert on the first read.
            tls.sendall(REQUEST)
            answer = tls.recv(64)
    except (ssl.SSLError, OSError) as error:
        return f"refused: {error}"
    return answer.split(b"\r\n", 1)[0].decode("ascii", "replace") or "refused: closed"


def refusal(deployment: Deployment, cert: Path, key: Path) -> str:
    """The alert a client the server refuses gets: read before the client sends anything (a
    request sent first may reach a socket the server already closed, and the reset that answers
    it can overtake the alert)."""
    context = ssl.create_default_context(cafile=str(deployment.ca_cert))
    context.load_cert_chain(str(cert), str(key))
    try:
        with (
            socket.create_connection(("127.0.0.1", deployment.port), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            answer = tls.recv(64)
    except ssl.SSLError as error:
        return str(error)
    pytest.fail(f"the server did not refuse the certificate: {answer!r}")


def serial(cert: Path) -> int:
    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def issue_other_client(deployment: Deployment, authority: Authority) -> tuple[Path, Path]:
    key, certificate = issue_certificate(authority, "other-ca-workload", server=False)
    cert_path = deployment.directory / "other.crt"
    key_path = deployment.directory / "other.key"
    cert_path.write_bytes(certificate_pem(certificate))
    key_path.write_bytes(private_key_pem(key))
    return cert_path, key_path


def test_a_revoked_client_is_refused_and_a_new_crl_revokes_without_a_restart(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "kms"
    deployment = prepare_deployment(directory, server={"crl_file": str(directory / "crl.pem")})
    authority = dev_authority(deployment)
    revoked = issue_client_certificate(deployment, "revoked", "revoked-workload")
    later = issue_client_certificate(deployment, "later", "later-workload")
    served = (deployment.client_cert, deployment.client_key)
    # A second CA in the bundle, with no CRL in the file: its clients cannot be checked.
    other_ca = new_authority("kms-other-ca")
    bundle = deployment.ca_cert.read_bytes()
    deployment.ca_cert.write_bytes(bundle + certificate_pem(other_ca.certificate))
    crl_file = directory / "crl.pem"
    crl_file.write_bytes(crl_pem(issue_crl(authority, (serial(revoked[0]),))))

    with running_server(deployment) as server:
        assert attempt(deployment, *served) == "HTTP/1.1 200 OK"
        assert attempt(deployment, *revoked).startswith("refused")
        assert "certificate revoked" in refusal(deployment, *revoked)
        assert attempt(deployment, *later) == "HTTP/1.1 200 OK"
        other = issue_other_client(deployment, other_ca)
        assert attempt(deployment, *other).startswith("refused")
        assert "unknown ca" in refusal(deployment, *other)

        # A new CRL, renamed into place: "later" is refused from now on, no restart.
        replace_file(
            crl_file, crl_pem(issue_crl(authority, (serial(revoked[0]), serial(later[0]))))
        )
        wait_until(
            lambda: attempt(deployment, *later).startswith("refused"),
            "the new CRL to revoke the second client",
            detail=server.output,
        )
        # Each worker looks at the files on its own connections; after a SIGHUP every worker is
        # new, forked from the master that read the new CRL.
        reload_and_wait(server)
        assert "certificate revoked" in refusal(deployment, *later)
        assert attempt(deployment, *served) == "HTTP/1.1 200 OK"

        # Garbage in its place: refused in one line, and the CRL in force still revokes, also in
        # the workers a SIGHUP starts.
        replace_file(crl_file, b"not a CRL\n")
        reload_and_wait(server)
        refusals = [line for line in server.output().splitlines() if "TLS files refused" in line]
        assert len(refusals) == 1, server.output()
        assert str(crl_file) in refusals[0] and "PEM" in refusals[0]
        assert attempt(deployment, *served) == "HTTP/1.1 200 OK"
        assert "certificate revoked" in refusal(deployment, *later)
        assert "certificate revoked" in refusal(deployment, *revoked)
    assert "Worker failed to boot" not in server.output()
