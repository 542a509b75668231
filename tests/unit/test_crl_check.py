"""What ``kms.server.tls.check_crls`` makes a server context do, in one process.

A real TLS handshake over a socket pair, the server context made as kms makes it (CA bundle,
client certificate required, the CRL file added by ``check_crls``), with CRLs that
``kms.server.tlsfiles`` would refuse to load (expired) but that a running server can come to hold
when the clock passes their ``nextUpdate``: every client of that CA is then refused.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kms.devcerts import (
    Authority,
    certificate_pem,
    crl_pem,
    issue_certificate,
    issue_crl,
    new_authority,
    private_key_pem,
)
from kms.server.tls import check_crls


def write_pair(
    directory: Path, name: str, authority: Authority, *, server: bool
) -> tuple[Path, Path]:
    key, certificate = issue_certificate(
        authority, name, server=server, dns_names=(name,), ip_addresses=()
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate_pem(certificate))
    key_path.write_bytes(private_key_pem(key))
    return cert_path, key_path


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> str:
    """``ok``, or the server's reason for refusing the client."""
    server_side, client_side = socket.socketpair()
    outcome: list[str] = []

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_side, server_side=True):
                outcome.append("ok")
        except (ssl.SSLError, OSError) as error:
            outcome.append(str(error))

    thread = threading.Thread(target=serve)
    thread.start()
    # The client's side ends when the server refuses (an alert) or closes: either is fine here.
    with (
        contextlib.suppress(ssl.SSLError, OSError),
        client_context.wrap_socket(client_side, server_hostname="kms.test") as tls,
    ):
        tls.recv(1)
    thread.join(timeout=30)
    assert outcome, "the server side never finished"
    return outcome[0]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    authority = new_authority("crl-test-ca")
    (tmp_path / "ca.pem").write_bytes(certificate_pem(authority.certificate))
    server = write_pair(tmp_path, "kms.test", authority, server=True)
    client = write_pair(tmp_path, "client", authority, server=False)
    return {"authority": authority, "server": server, "client": client, "directory": tmp_path}


def contexts(pki: dict[str, object], crl: bytes) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    directory = pki["directory"]
    assert isinstance(directory, Path)
    (directory / "crl.pem").write_bytes(crl)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*(str(path) for path in pki["server"]))  # type: ignore[attr-defined]
    server.load_verify_locations(cafile=str(directory / "ca.pem"))
    server.verify_mode = ssl.CERT_REQUIRED
    check_crls(server, directory / "crl.pem")
    client = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    client.load_cert_chain(*(str(path) for path in pki["client"]))  # type: ignore[attr-defined]
    return server, client


def test_a_current_crl_that_does_not_name_the_client_lets_it_in(pki: dict[str, object]) -> None:
    authority = pki["authority"]
    assert isinstance(authority, Authority)
    assert handshake(*contexts(pki, crl_pem(issue_crl(authority)))) == "ok"


def test_a_crl_that_expired_while_loaded_refuses_every_client_of_its_ca(
    pki: dict[str, object],
) -> None:
    authority = pki["authority"]
    assert isinstance(authority, Authority)
    now = datetime.now(UTC)
    expired = issue_crl(
        authority, last_update=now - timedelta(days=2), next_update=now - timedelta(seconds=1)
    )
    assert "CRL has expired" in handshake(*contexts(pki, crl_pem(expired)))


def test_a_client_whose_ca_has_no_crl_in_the_file_is_refused(pki: dict[str, object]) -> None:
    other = new_authority("another-ca")
    assert "unable to get certificate CRL" in handshake(*contexts(pki, crl_pem(issue_crl(other))))
