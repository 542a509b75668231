"""Mutual TLS: who gets in, who does not, and where the caller's identity comes from."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms.devcerts import (
    Authority,
    certificate_pem,
    issue_certificate,
    new_authority,
    private_key_pem,
)
from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    REQUEST_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    ServerProcess,
    clean_environment,
    expect_json,
    expect_no_content,
    new_session,
    prepare_deployment,
    unique_key_id,
)
from tests.helpers.identities import running_server

pytestmark = pytest.mark.slow

ORCHESTRATOR = "CN=orchestrator;SAN=DNS:orchestrator"


def dev_authority(deployment: Deployment) -> Authority:
    """The CA the server trusts, loaded from the files ``kms dev-certs`` wrote."""
    key = serialization.load_pem_private_key(deployment.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    certificate = x509.load_pem_x509_certificate(deployment.ca_cert.read_bytes())
    return Authority(key=key, certificate=certificate)


def write_client_certificate(
    directory: Path,
    authority: Authority,
    common_name: str,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[Path, Path]:
    key, certificate = issue_certificate(
        authority, common_name, server=False, not_before=not_before, not_after=not_after
    )
    cert_path, key_path = directory / f"{common_name}.crt", directory / f"{common_name}.key"
    cert_path.write_bytes(certificate_pem(certificate))
    key_path.write_bytes(private_key_pem(key))
    return cert_path, key_path


def client_context(
    deployment: Deployment, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context that trusts the dev CA and presents ``cert`` (or no certificate)."""
    context = ssl.create_default_context(cafile=str(deployment.ca_cert))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def refusal(deployment: Deployment, context: ssl.SSLContext) -> ssl.SSLError:
    """Handshake, then wait for the server's first word; return the TLS error its alert raised.

    With TLS 1.3 the server judges the client certificate after the client has finished its
    side of the handshake, so the alert may arrive at the handshake or at the first read. The
    client sends nothing itself: data sent to a server that has already closed could be answered
    with a TCP reset, which would hide the alert. A server that wrongly accepted waits for a
    request; the read then ends at the safety timeout and the test fails.
    """
    with socket.create_connection(
        ("127.0.0.1", deployment.port), timeout=REQUEST_TIMEOUT_SECONDS
    ) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                answer = tls.recv(65536)
        except ssl.SSLError as error:
            return error
    pytest.fail(f"the server did not refuse the connection; it sent {answer[:200]!r}")


def assert_alive_for_a_good_client(server: ServerProcess, deployment: Deployment) -> None:
    assert server.process.poll() is None, server.output()
    with closing(
        new_session(deployment.client_cert, deployment.client_key, deployment.ca_cert)
    ) as session:
        response = session.get(
            f"{deployment.base_url}/v1/kms/keys", timeout=REQUEST_TIMEOUT_SECONDS
        )
    assert isinstance(expect_json(response, 200), list)


def assert_refused(
    server: ServerProcess, deployment: Deployment, context: ssl.SSLContext, alerts: set[str]
) -> None:
    """The server, alive before and after, refused this client with one of ``alerts``.

    A dead server or a closed port raises ``ConnectionRefusedError`` or ``ConnectionResetError``,
    not an ``SSLError`` carrying the server's alert, so it cannot pass for a refusal.
    """
    assert server.process.poll() is None, server.output()
    error = refusal(deployment, context)
    assert error.reason in alerts, (error.reason, str(error))
    assert_alive_for_a_good_client(server, deployment)


# What the server's OpenSSL sends, as the client's OpenSSL names it.
NO_CERTIFICATE = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"}
UNTRUSTED_CERTIFICATE = {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"}
OUTDATED_CERTIFICATE = {"SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_BAD_CERTIFICATE"}


def test_client_certificate_from_the_trusted_ca_is_accepted(
    server: ServerProcess, deployment: Deployment, tmp_path: Path
) -> None:
    """The control for the refusals below: the same route with a good certificate works, and
    the access log names the caller from that certificate."""
    cert, key = write_client_certificate(tmp_path, dev_authority(deployment), "billing")
    with closing(new_session(cert, key, deployment.ca_cert)) as session:
        response = session.get(
            f"{deployment.base_url}/v1/kms/keys", timeout=REQUEST_TIMEOUT_SECONDS
        )
    assert isinstance(expect_json(response, 200), list)
    line = server.access_log_line(response.headers["X-Request-Id"])
    assert 'caller="CN=billing" ' in line


def test_no_client_certificate_is_refused_at_the_handshake(
    server: ServerProcess, deployment: Deployment
) -> None:
    assert_refused(server, deployment, client_context(deployment), NO_CERTIFICATE)


def test_client_certificate_from_another_ca_is_refused(
    server: ServerProcess, deployment: Deployment, tmp_path: Path
) -> None:
    # Same subject as the real client: only the issuer differs.
    cert, key = write_client_certificate(tmp_path, new_authority("kms-dev-ca"), "orchestrator")
    assert_refused(server, deployment, client_context(deployment, cert, key), UNTRUSTED_CERTIFICATE)


@pytest.mark.parametrize(
    ("starts_in_days", "ends_in_days"), [(-30, -1), (1, 30)], ids=["expired", "not-yet-valid"]
)
def test_client_certificate_outside_its_validity_is_refused(
    server: ServerProcess,
    deployment: Deployment,
    tmp_path: Path,
    starts_in_days: int,
    ends_in_days: int,
) -> None:
    now = datetime.now(UTC)
    cert, key = write_client_certificate(
        tmp_path,
        dev_authority(deployment),
        "orchestrator",
        not_before=now + timedelta(days=starts_in_days),
        not_after=now + timedelta(days=ends_in_days),
    )
    assert_refused(server, deployment, client_context(deployment, cert, key), OUTDATED_CERTIFICATE)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"]
)
def test_tls_before_1_2_is_refused_by_the_server(
    server: ServerProcess, deployment: Deployment, version: ssl.TLSVersion
) -> None:
    """The client offers only an old version, with a good certificate.

    ``@SECLEVEL=0`` lets this machine's OpenSSL offer TLS 1.0/1.1 at all; without it the client
    would refuse by itself and the test would prove nothing about the server. The alert must be
    the server's ``protocol_version``: its TLS 1.2 floor refused the offer. With the floor lowered
    to 1.0, this machine's OpenSSL still fails the handshake a step later (its default security
    level leaves no usable cipher for TLS 1.0), but with a ``handshake_failure`` alert; so the
    alert, not merely the refusal, is what is checked. tests/service/test_gunicorn_conf.py
    checks the floor of the context itself.
    """
    context = client_context(deployment, deployment.client_cert, deployment.client_key)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    assert_refused(server, deployment, context, {"TLSV1_ALERT_PROTOCOL_VERSION"})


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_the_old_version_client_speaks_tls_1_2_when_allowed(
    server: ServerProcess, deployment: Deployment
) -> None:
    """The control for the test above: the same client set-up, allowed TLS 1.2, is served."""
    context = client_context(deployment, deployment.client_cert, deployment.client_key)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(
            ("127.0.0.1", deployment.port), timeout=REQUEST_TIMEOUT_SECONDS
        ) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.2"
        tls.sendall(b"GET /v1/kms/keys HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert tls.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_plain_http_to_the_tls_port_gets_no_response(
    server: ServerProcess, deployment: Deployment
) -> None:
    assert server.process.poll() is None, server.output()
    with socket.create_connection(
        ("127.0.0.1", deployment.port), timeout=REQUEST_TIMEOUT_SECONDS
    ) as raw:
        raw.sendall(b"GET /v1/kms/keys HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        try:
            answer = raw.recv(65536)
        except ConnectionResetError:
            answer = b""
    # The connection was accepted (the port is open) and closed without any HTTP answer.
    assert not answer.startswith(b"HTTP/"), answer[:200]
    assert_alive_for_a_good_client(server, deployment)


SPOOFED_HEADERS = {
    "X-Client-CN": "admin",
    "X-SSL-Client-S-DN": "CN=admin",
    "X-SSL-Client-Cert": "CN=admin",
    "X-Forwarded-Client-Cert": 'By=spiffe://kms;Subject="CN=admin";URI=spiffe://admin',
    "X-Forwarded-User": "admin",
    "SSL-Client-S-DN-CN": "admin",
    "X-Request-Id": "admin",
}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_identity_headers_are_ignored(
    client: KMSClient, server: ServerProcess, method: str
) -> None:
    if method == "GET":
        response = client.get("/v1/kms/keys", params={"limit": 1}, headers=SPOOFED_HEADERS)
        expect_json(response, 200)
    else:
        key_id = unique_key_id("spoof")
        response = client.post("/v1/kms/keys", json={"key_id": key_id}, headers=SPOOFED_HEADERS)
        expect_json(response, 201)
        expect_no_content(client.delete(f"/v1/kms/keys/{key_id}"))
    request_id = response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
    line = server.access_log_line(request_id)
    assert f'caller="{ORCHESTRATOR}" ' in line
    assert "admin" not in line


@pytest.mark.needs("curl")
def test_readme_curl_example(client: KMSClient, deployment: Deployment) -> None:
    """The command ``make run`` prints (the README shows it): the dev CA verifies the server as
    localhost. The README's own session: test_readme.py."""
    result = subprocess.run(
        [
            "curl",
            "--cacert",
            "ca.pem",
            "--cert",
            "client.crt",
            "--key",
            "client.key",
            "-X",
            "POST",
            f"https://localhost:{deployment.port}/v1/kms/keys",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"key_id":"device123"}',
            "--noproxy",
            "*",
            "--silent",
            "--show-error",
            "--max-time",
            str(REQUEST_TIMEOUT_SECONDS),
            "--write-out",
            "\n%{http_code} %{content_type}",
        ],
        cwd=deployment.directory,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, status_line = result.stdout.rpartition("\n")
    assert status_line == "201 application/json"
    created = json.loads(body)
    assert (created["key_id"], created["purpose"], created["algorithm"], created["version"]) == (
        "device123",
        "encrypt",
        "AES-256-GCM",
        1,
    )
    expect_no_content(client.delete("/v1/kms/keys/device123"))


def resumed_on_a_later_connection(port: int, context: ssl.SSLContext, attempts: int = 8) -> bool:
    """Connect, then ``attempts`` times again offering the first connection's TLS session; True
    when the server resumed it on any (an abbreviated handshake, without the client
    certificate's check). Several attempts, because a server with several workers resumes only
    on the worker that made the session.

    Each connection makes a request and reads the answer to its end: a TLS 1.3 server sends its
    session tickets after the handshake, so the client has one only after reading."""
    session = None
    for attempt in range(attempts + 1):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_SECONDS) as raw,
            context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            if attempt and tls.session_reused:
                return True
            if attempt == 0:
                session = tls.session
    return False


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_sessions_are_never_resumed(
    server: ServerProcess, deployment: Deployment, version: ssl.TLSVersion
) -> None:
    """Every connection makes a full handshake, so every connection's client certificate is
    checked against the CA then (a resumed session would skip that check, up to the session's
    lifetime after it: a certificate that expired meanwhile would still get in). Each worker
    keeps one TLS context (docs/performance.md), which would otherwise let sessions resume: by
    session ID in TLS 1.2, by ticket in TLS 1.3."""
    context = client_context(deployment, deployment.client_cert, deployment.client_key)
    context.minimum_version = context.maximum_version = version
    assert not resumed_on_a_later_connection(deployment.port, context)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_resumption_probe_sees_a_server_that_resumes(
    deployment: Deployment, version: ssl.TLSVersion
) -> None:
    """The control for the test above: a plain Python TLS server with the same certificates and
    one context, as a kms worker has, does resume the probe's sessions, so the probe can tell."""
    import threading

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(
        deployment.directory / "server.crt", deployment.directory / "server.key"
    )
    server_context.load_verify_locations(deployment.ca_cert)
    server_context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            with server_context.wrap_socket(connection, server_side=True) as tls:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += tls.recv(65536)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        context = client_context(deployment, deployment.client_cert, deployment.client_key)
        context.minimum_version = context.maximum_version = version
        assert resumed_on_a_later_connection(port, context)
    finally:
        listener.close()
        thread.join(timeout=REQUEST_TIMEOUT_SECONDS)


def test_a_refused_client_certificate_is_one_log_line_per_kind(tmp_path: Path) -> None:
    """A client without a certificate, or with one no trusted CA signed, sees only its TLS
    library's words (curl: ``getpeername() failed``); the server logs why. Repeats within the
    interval are counted, not logged: one worker, five refusals, one line."""
    deployment = prepare_deployment(tmp_path / "kms", server={"workers": 1})
    with running_server(deployment) as server:
        for _ in range(5):
            assert refusal(deployment, client_context(deployment)).reason in NO_CERTIFICATE
        stranger, stranger_key = write_client_certificate(
            tmp_path, new_authority("kms-dev-ca"), "orchestrator"
        )
        untrusted = refusal(deployment, client_context(deployment, stranger, stranger_key))
        assert untrusted.reason in UNTRUSTED_CERTIFICATE
        # One event loop: the untrusted client's line comes after the five before it were seen.
        line = server.wait_for_log("refused: untrusted client certificate")
        assert re.search(
            r"\[WARNING\] TLS handshake from ip=127\.0\.0\.1 refused: untrusted client "
            r"certificate \(unable to get local issuer certificate\)$",
            line,
        ), line
        missing = [line for line in server.output().splitlines() if "no client certificate" in line]
        assert len(missing) == 1, server.output()
        assert re.search(
            r"\[WARNING\] TLS handshake from ip=127\.0\.0\.1 refused: no client certificate$",
            missing[0],
        ), missing[0]
