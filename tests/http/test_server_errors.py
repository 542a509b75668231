"""What the server itself answers, before any view runs: JSON errors, and clients that go away.

gunicorn's parser refuses malformed requests (a bad request line, a line or headers over the
limits, a malformed header or chunked body); kms's worker answers each with the same
``{"error": "..."}`` shape and a 4xx as the application's errors, never gunicorn's HTML page. A
client that drops its connection half-way through a body is a client error: a log line, no
traceback, no 500.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers.harness import JSON, Deployment, ServerProcess
from tests.helpers.raw import (
    parse_response,
    raw_request,
    read_head,
    read_response,
    read_to_end,
    tls_connection,
)

pytestmark = pytest.mark.slow

HOST = b"Host: 127.0.0.1\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"GARBAGE\r\n\r\n", 400, id="bad-request-line"),
        pytest.param(b"get /v1/kms/keys HTTP/1.1\r\n" + HOST + b"\r\n", 400, id="bad-method"),
        pytest.param(b"GET /v1/kms/keys HTTP/7.1\r\n" + HOST + b"\r\n", 400, id="bad-version"),
        pytest.param(
            b"GET /v1/kms/keys/" + b"a" * 5000 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
            414,
            id="request-line-too-long",
        ),
        pytest.param(
            b"GET /v1/kms/keys HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            id="header-too-large",
        ),
        pytest.param(
            b"GET /v1/kms/keys HTTP/1.1\r\n"
            + HOST
            + b"".join(b"X-H%d: 1\r\n" % number for number in range(120))
            + b"\r\n",
            431,
            id="too-many-headers",
        ),
        pytest.param(
            b"GET /v1/kms/keys HTTP/1.1\r\n" + HOST + b"Bad Name: x\r\n\r\n",
            400,
            id="invalid-header-name",
        ),
        pytest.param(
            b"GET /v1/kms/keys HTTP/1.1\r\n" + HOST + b"NoColon\r\n\r\n",
            400,
            id="header-without-colon",
        ),
        pytest.param(
            b"GET /v1/kms/keys HTTP/1.1\r\n" + HOST + b"X-A: 1\r\n folded\r\n\r\n",
            400,
            id="obsolete-folding",
        ),
        pytest.param(
            b"POST /v1/kms/encrypt HTTP/1.1\r\n"
            + HOST
            + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
            id="two-content-lengths",
        ),
        pytest.param(
            b"POST /v1/kms/encrypt HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n",
            400,
            id="unsupported-transfer-coding",
        ),
        pytest.param(
            b"POST /v1/kms/encrypt HTTP/1.1\r\n"
            + HOST
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
            400,
            id="bad-chunk-size",
        ),
    ],
)
def test_server_refusals_are_json(
    server: ServerProcess, deployment: Deployment, request_bytes: bytes, status: int
) -> None:
    answer = raw_request(deployment, request_bytes)
    response = parse_response(answer)
    assert response.status == status, answer
    assert response.headers["content-type"] == JSON, answer
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert b"<html" not in answer.lower()
    assert "Traceback" not in server.output()


def test_a_refused_body_is_logged_with_its_caller(
    server: ServerProcess, deployment: Deployment
) -> None:
    offset = len(server.output())
    answer = raw_request(
        deployment,
        b"POST /v1/kms/encrypt HTTP/1.1\r\n"
        + HOST
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX\r\n",
    )
    assert parse_response(answer).status == 400
    needle = '"POST /v1/kms/encrypt HTTP/1.1" 400 '
    lines = [line for line in new_log(server, offset, needle).splitlines() if needle in line]
    assert len(lines) == 1, lines
    assert 'caller="CN=orchestrator;SAN=DNS:orchestrator" ' in lines[0], lines


def test_expect_100_continue_is_answered_before_the_body(
    server: ServerProcess, deployment: Deployment
) -> None:
    """A client that waits for "100 Continue" before its body gets it, then its answer."""
    body = b'{"key_id": "none-such", "plaintext": "aGk="}'
    with tls_connection(deployment) as tls:
        tls.sendall(
            b"POST /v1/kms/encrypt HTTP/1.1\r\n"
            + HOST
            + b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        assert read_head(tls) == b"HTTP/1.1 100 Continue\r\n\r\n"
        tls.sendall(body[:10])
        # A client that pauses half-way through its body is what this test is about: the pause
        # is the client's behaviour, not a wait for the server.
        time.sleep(0.2)
        tls.sendall(body[10:])
        answer = read_to_end(tls)
    response = parse_response(answer)
    assert response.status == 404, answer
    assert response.json() == {"error": 'record not found: key "none-such"'}


def read_until_closed(connection: socket.socket) -> None:
    """Drop what the server sends until it closes the connection."""
    try:
        while connection.recv(65536):
            pass
    except ConnectionResetError:
        pass


def new_log(server: ServerProcess, offset: int, needle: str) -> str:
    """The server output after ``offset`` once it holds ``needle`` (a safety limit only)."""
    deadline = time.monotonic() + 30
    while True:
        text = server.output()[offset:]
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_cut_off_half_way_is_a_client_error(
    server: ServerProcess, deployment: Deployment, chunked: bool
) -> None:
    offset = len(server.output())
    head = b"POST /v1/kms/encrypt HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
    if chunked:
        request = head + b"Transfer-Encoding: chunked\r\n\r\n40\r\n" + b'{"key_id": "k", '
    else:
        request = head + b"Content-Length: 64\r\n\r\n" + b'{"key_id": "k", '
    with tls_connection(deployment) as tls:
        tls.sendall(request)
        # The client goes away: its end is closed after what it sent (without TLS's
        # close_notify, as a dropped connection would be), and the server, having read all of
        # it, closes its own.
        tls.shutdown(socket.SHUT_WR)
        read_until_closed(tls)
    needle = "went away during the request body"
    text = new_log(server, offset, needle)
    assert needle in text, text
    assert "Traceback" not in text, text
    assert '" 500 ' not in text, text
    assert "caller=" not in text, text  # no access-log line: the request never ran


def test_server_still_serves_on_a_connection_after_a_pipelined_request(
    server: ServerProcess, deployment: Deployment
) -> None:
    """Two requests sent at once on one connection are both answered, in order."""
    one = b"GET /v1/kms/keys?limit=1 HTTP/1.1\r\n" + HOST + b"\r\n"
    two = b"GET /v1/kms/keys/none-such HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
    answer = raw_request(deployment, one + two)
    first = parse_response(answer)
    assert first.status == 200, answer
    rest = answer[answer.index(b"\r\n\r\n") + 4 + len(first.body) :]
    second = parse_response(rest)
    assert second.status == 404, answer
    assert second.json() == {"error": 'record not found: key "none-such"'}


@pytest.mark.parametrize("pipelined", [False, True], ids=["in-turn", "pipelined"])
def test_connection_stays_open_after_a_413_for_a_declared_length(
    server: ServerProcess, deployment: Deployment, pipelined: bool
) -> None:
    """A body of known length over the limit: 413 at once, the body dropped, then the next
    request on the same connection is answered."""
    size = 1024 * 1024 + 100
    first = (
        b"POST /v1/kms/encrypt HTTP/1.1\r\n"
        + HOST
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size
        + b" " * size
    )
    second = b"GET /v1/kms/keys/none-such HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
    with tls_connection(deployment) as tls:
        if pipelined:
            tls.sendall(first + second)
        else:
            tls.sendall(first)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}\n"):
                chunk = tls.recv(65536)
                assert chunk, answer
                answer += chunk
            tls.sendall(second)
        answer = read_to_end(tls) if pipelined else answer + read_to_end(tls)
    too_large = parse_response(answer)
    assert too_large.status == 413, answer
    assert too_large.headers.get("connection") != "close", answer
    rest = answer[answer.index(b"\r\n\r\n") + 4 + len(too_large.body) :]
    not_found = parse_response(rest)
    assert not_found.status == 404, answer
    assert not_found.json() == {"error": 'record not found: key "none-such"'}


def test_a_declared_body_too_long_to_drop_is_refused_with_connection_close(
    server: ServerProcess, deployment: Deployment
) -> None:
    """More than 16 MiB over the limit: 413 at once, saying "Connection: close"
    (docs/security.md), and the server's side shut; the body is not waited for."""
    size = 1024 * 1024 + 16 * 1024 * 1024 + 1
    head = (
        b"POST /v1/kms/encrypt HTTP/1.1\r\n"
        + HOST
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size
    )
    with tls_connection(deployment) as tls:
        tls.sendall(head + b" " * 1000)
        answer = read_response(tls)
        too_large = parse_response(answer)
        assert too_large.status == 413, answer
        assert too_large.headers.get("connection") == "close", answer
        assert read_to_end(tls) == b""
