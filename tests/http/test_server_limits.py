"""The worker's deadlines and its connection cap, each on a private server with small settings.

No assertion here is about time: each waits (up to a safety limit) for the server to close a
connection that missed its deadline, and checks what the log says.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

import pytest

from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    ServerProcess,
    expect_json,
    prepare_deployment,
    wait_until,
)
from tests.helpers.raw import tls_connection

pytestmark = pytest.mark.slow


@contextmanager
def private_server(directory: Path, **server_settings: int) -> Iterator[ServerProcess]:
    deployment = prepare_deployment(directory, server=server_settings)
    server = ServerProcess(deployment)
    try:
        with closing(KMSClient(deployment)) as client:
            server.wait_until_serving(client)
        yield server
    finally:
        returncode = server.stop()
    output = server.output()
    assert returncode == 0, output
    assert "Traceback" not in output, output


def closed_by_server(connection: socket.socket) -> bool:
    """Wait (up to the safety limit) for the server to close; True if it did."""
    connection.settimeout(PROCESS_TIMEOUT_SECONDS)
    try:
        while connection.recv(4096):
            pass
    except TimeoutError:
        return False
    except (ssl.SSLError, ConnectionResetError):
        return True  # closed without a TLS close_notify, or reset: closed all the same
    return True


def closed_by_server_already(connection: socket.socket) -> bool:
    """Whether the server has closed ``connection``, without waiting and reading nothing."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def tcp_connection(deployment: Deployment) -> socket.socket:
    return socket.create_connection(("127.0.0.1", deployment.port), timeout=30)


def test_connections_that_miss_their_deadlines_are_closed(tmp_path: Path) -> None:
    with private_server(
        tmp_path, handshake_timeout=1, header_timeout=1, body_timeout=1, body_min_rate=0
    ) as server:
        deployment = server.deployment
        with ExitStack() as stack:
            silent = stack.enter_context(tcp_connection(deployment))
            hello = stack.enter_context(tcp_connection(deployment))
            hello.sendall(b"\x16\x03")
            head = stack.enter_context(tls_connection(deployment))
            head.sendall(b"GET /v1/kms/keys HTTP/1.1\r\nHo")
            body = stack.enter_context(tls_connection(deployment))
            body.sendall(
                b"POST /v1/kms/encrypt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            for connection in (silent, hello, head, body):
                assert closed_by_server(connection), connection
        output = server.output()
    assert "request head from ip=127.0.0.1 not complete in time; closed" in output
    assert "request body from ip=127.0.0.1 dropped: stalled after 1 of 100 bytes" in output


def test_at_the_connection_cap_a_new_client_is_still_served(tmp_path: Path) -> None:
    """One worker, at most 16 connections: 40 silent ones do not lock a real client out.

    The oldest connections still in their handshake are closed to make room (the handshake
    deadline is long here, so only the cap can have closed them).
    """
    with private_server(tmp_path, workers=1, max_connections=16, handshake_timeout=300) as server:
        deployment = server.deployment
        with ExitStack() as stack:
            silent = [stack.enter_context(tcp_connection(deployment)) for _ in range(40)]
            # The real client comes once the cap is full of silent connections: the worker has
            # closed all but 16 of them (at the cap it closes the oldest in their handshake).
            wait_until(
                lambda: sum(map(closed_by_server_already, silent)) >= len(silent) - 16,
                "the worker to take the silent connections up to its cap",
                detail=server.output,
            )
            with closing(KMSClient(deployment)) as client:
                for _ in range(3):
                    client.session.close()  # a new connection each time
                    assert isinstance(expect_json(client.get("/v1/kms/keys"), 200), list)
            still_open = 0
            for connection in silent:
                connection.settimeout(0.2)
                try:
                    if connection.recv(1) == b"":
                        continue
                except TimeoutError:
                    still_open += 1
                except ConnectionResetError:
                    continue
    assert still_open <= 16, still_open
    assert still_open >= 10, still_open  # the cap closed the oldest, not everything


def test_idle_kept_alive_connections_hold_no_thread(tmp_path: Path) -> None:
    """One worker with one thread: connections idle between requests leave it free.

    Each idle connection also holds a partly sent next request head, which a thread would wait
    on if it had been given the connection.
    """
    with private_server(tmp_path, workers=1, threads=1) as server:
        deployment = server.deployment
        with ExitStack() as stack:
            idle = []
            for _ in range(3):
                connection = stack.enter_context(tls_connection(deployment))
                connection.sendall(b"GET /v1/kms/keys?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = b""
                while not answer.endswith(b"]\n"):  # the JSON list ends the answer
                    chunk = connection.recv(65536)
                    assert chunk, answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                assert b"Connection: keep-alive" in answer, answer
                connection.sendall(b"GET /v1/kms/keys HTTP/1.1\r\nHo")
                idle.append(connection)
            with closing(KMSClient(deployment)) as client:
                for _ in range(3):
                    client.session.close()
                    assert isinstance(expect_json(client.get("/v1/kms/keys"), 200), list)


def test_a_body_slower_than_the_floor_rate_is_dropped(tmp_path: Path) -> None:
    """A body that keeps trickling (so never stalls) but averages under the floor is dropped."""
    with private_server(tmp_path, body_timeout=60, body_min_rate=100) as server:
        with tls_connection(server.deployment) as connection:
            connection.sendall(
                b"POST /v1/kms/encrypt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            connection.settimeout(0.3)
            closed = False
            for _ in range(100):  # 30 s at most, a safety limit
                try:
                    connection.sendall(b" ")
                    closed = connection.recv(1) == b""
                except TimeoutError:
                    continue
                except (ssl.SSLError, OSError):
                    closed = True
                if closed:
                    break
            assert closed
        output = server.output()
    assert "request body from ip=127.0.0.1 dropped: slower than the floor rate" in output, output
