"""Log lines a client cannot forge: every client-controlled value in a log line is escaped.

The caller's names come from its certificate, which the operator's CA signed but whose subject
the client chose; the request line comes from the client too. Quotes, newlines, control
characters and non-ASCII text in either must neither end the access-log line nor fake a field.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms.devcerts import Authority, certificate_pem, issue_certificate, private_key_pem
from kms.server.logs import escape_log_line, escape_log_value
from tests.helpers.harness import (
    REQUEST_TIMEOUT_SECONDS,
    Deployment,
    ServerProcess,
    expect_json,
    new_session,
)
from tests.helpers.raw import parse_response, raw_request

pytestmark = pytest.mark.slow

FORGING_CN = 'evil" 200 0 1ms\ncaller="CN=admin\\" \x1b[2J caf\u00e9 \u2028'
FORGING_CN_ESCAPED = 'evil\\" 200 0 1ms\\ncaller=\\"CN=admin\\\\\\" \\x1b[2J caf\\xe9 \\u2028'


def test_escape_log_value_leaves_one_printable_ascii_line() -> None:
    assert escape_log_value(FORGING_CN) == FORGING_CN_ESCAPED
    assert escape_log_value("CN=orchestrator;SAN=DNS:orchestrator") == (
        "CN=orchestrator;SAN=DNS:orchestrator"
    )
    assert escape_log_value("\U0001f600\x00\r\t") == "\\U0001f600\\x00\\r\\t"
    # A whole message keeps its quotes and backslashes; only what breaks the line is escaped.
    assert escape_log_line('a "b" \\ c\nd\u0085') == 'a "b" \\ c\\nd\\x85'


def write_client_certificate(
    directory: Path, deployment: Deployment, common_name: str
) -> tuple[Path, Path]:
    key = serialization.load_pem_private_key(deployment.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    authority = Authority(
        key=key, certificate=x509.load_pem_x509_certificate(deployment.ca_cert.read_bytes())
    )
    client_key, certificate = issue_certificate(authority, common_name, server=False)
    cert_path, key_path = directory / "forger.crt", directory / "forger.key"
    cert_path.write_bytes(certificate_pem(certificate))
    key_path.write_bytes(private_key_pem(client_key))
    return cert_path, key_path


def test_certificate_names_cannot_forge_an_access_log_line(
    server: ServerProcess, deployment: Deployment, tmp_path: Path
) -> None:
    cert, key = write_client_certificate(tmp_path, deployment, FORGING_CN)
    with closing(new_session(cert, key, deployment.ca_cert)) as session:
        responses = [
            session.get(f"{deployment.base_url}/v1/kms/keys", timeout=REQUEST_TIMEOUT_SECONDS)
            for _ in range(3)
        ]
    for response in responses:
        assert isinstance(expect_json(response, 200), list)
        # Exactly one line holds the request's id (access_log_line asserts it), escaped.
        line = server.access_log_line(response.headers["X-Request-Id"])
        assert f'caller="CN={FORGING_CN_ESCAPED}" ' in line, line
        assert line.isascii() and line.isprintable(), line
    output = server.output()
    assert not any(line.startswith('caller="CN=admin') for line in output.splitlines())
    assert "\x1b" not in output


def test_request_line_cannot_forge_an_access_log_line(
    server: ServerProcess, deployment: Deployment
) -> None:
    # gunicorn refuses control characters in the target; quotes and backslashes it lets through.
    answer = raw_request(
        deployment,
        b'GET /v1/kms/keys/x"\\" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
    )
    response = parse_response(answer)
    assert 400 <= response.status < 500, answer  # the key id is refused; any 4xx will do
    line = server.access_log_line(response.headers["x-request-id"])
    assert '"GET /v1/kms/keys/x\\"\\\\\\" HTTP/1.1" 4' in line, line


def test_a_refused_request_line_cannot_forge_an_error_log_line(
    server: ServerProcess, deployment: Deployment
) -> None:
    """gunicorn quotes a refused request line in its warning: escaped there too."""
    offset = len(server.output())
    answer = raw_request(
        deployment, b'GET /\x1b[2J\xff"\rcaller="admin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'
    )
    assert parse_response(answer).status == 400, answer
    text = server.output()[offset:]
    lines = [line for line in text.splitlines() if "invalid request from ip=" in line]
    assert len(lines) == 1, text
    assert "\\x1b[2J\\xff" in lines[0], lines
    assert "\x1b" not in text and "\xff" not in text and "\r" not in text, text
