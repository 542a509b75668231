"""The worker's deadlines and its connection cap, each on a private server with small settings.

No assertion here is about time: each waits (up to a safety limit) for the server to close a
connection that missed its deadline, and checks what the log says.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    create_key,
    expect_json,
    prepare_deployment,
    wait_until,
)
from tests.helpers.identities import issue_client_certificate
from tests.helpers.raw import RawResponse, ResponseStream, tls_connection

pytestmark = pytest.mark.slow


@contextmanager
def private_server(
    directory: Path, policy: str | None = None, **server_settings: int
) -> Iterator[ServerProcess]:
    sections: dict[str, dict[str, Any]] = {"server": dict(server_settings)}
    if policy is not None:
        (directory / "policy.yaml").write_text(policy, encoding="utf-8")
        sections["authorization"] = {"policy_file": str(directory / "policy.yaml")}
    deployment = prepare_deployment(directory, **sections)
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


OPENAPI_REQUEST = b"GET /v1/kms/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
#: Requests each never-reading connection pipelines: about 4 MB of answers, far more than the
#: socket buffers between a client that reads nothing and the server hold.
PIPELINED = 40


def test_clients_that_never_read_their_answers_hold_no_thread(tmp_path: Path) -> None:
    """24 connections pipeline requests for the OpenAPI document (about 100 KB each) and never
    read; one worker with two threads still answers a real client every time.

    Every deadline is long (300 s), so only a thread that never waits on a client can have
    answered: a thread that wrote the answer itself would wait 300 s on each of them. Then one
    of the never-reading clients reads: it gets each of its answers, whole and in order.
    """
    with private_server(
        tmp_path, workers=1, threads=2, body_timeout=300, write_timeout=300
    ) as server:
        deployment = server.deployment
        with ExitStack() as stack:
            unread = []
            for _ in range(24):
                connection = stack.enter_context(tls_connection(deployment, receive_buffer=4096))
                connection.sendall(OPENAPI_REQUEST * PIPELINED)
                unread.append(connection)
            with closing(KMSClient(deployment)) as client:
                for _ in range(20):
                    assert expect_json(client.get("/healthz"), 200) == {"status": "ok"}
                    assert isinstance(expect_json(client.get("/v1/kms/keys"), 200), list)
            answers = ResponseStream(unread[0])
            documents = [answers.next() for _ in range(PIPELINED)]
            assert {document.status for document in documents} == {200}
            assert all(document.json()["openapi"] for document in documents)
            assert len({document.body for document in documents}) == 1
            assert len(documents[0].body) > 64 * 1024
        output = server.output()
    assert "stopped reading its response" not in output, output


def test_a_client_that_reads_none_of_its_answer_is_closed(tmp_path: Path) -> None:
    with private_server(tmp_path, workers=1, threads=1, write_timeout=1) as server:
        deployment = server.deployment
        with tls_connection(deployment, receive_buffer=4096) as connection:
            connection.sendall(OPENAPI_REQUEST * PIPELINED)
            server.wait_for_log("client ip=127.0.0.1 stopped reading its response; closed")
            with closing(KMSClient(deployment)) as client:
                assert expect_json(client.get("/healthz"), 200) == {"status": "ok"}


#: The deployment's own client certificate (CN=orchestrator) may do everything; any other
#: certificate from the CA (CN=stranger here) is allowed nothing.
POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
"""
KEYS_REQUEST = b"GET /v1/kms/keys?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def answer_to(connection: ssl.SSLSocket, request: bytes = KEYS_REQUEST) -> RawResponse:
    connection.sendall(request)
    return ResponseStream(connection).next()


def test_at_the_connection_cap_no_clients_connection_is_closed_for_a_newcomer(
    tmp_path: Path,
) -> None:
    """One worker, at most 16 connections. The client holds 5 kept-alive connections that have
    each completed a request, and one upload half sent; then a certificate the policy allows
    nothing opens 20 connections, each completing a (refused) request and staying open.

    Past the cap the stranger's newcomers are turned away; none of the client's connections is
    closed, and the upload completes.
    """
    with private_server(
        tmp_path, policy=POLICY, workers=1, max_connections=16, body_timeout=300, body_min_rate=0
    ) as server:
        deployment = server.deployment
        stranger = issue_client_certificate(deployment, "stranger", "stranger")
        with closing(KMSClient(deployment)) as client:
            key_id = create_key(client, key_id="at-the-cap")["key_id"]
        body = json.dumps({"key_id": key_id, "plaintext": b64(os.urandom(30_000))}).encode()
        upload_head = (
            "POST /v1/kms/encrypt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with ExitStack() as stack:
            idle = [stack.enter_context(tls_connection(deployment)) for _ in range(5)]
            for connection in idle:
                assert answer_to(connection).status == 200
            upload = stack.enter_context(tls_connection(deployment))
            upload.sendall(upload_head + body[: len(body) // 2])
            turned_away = 0
            for _ in range(20):
                try:
                    connection = stack.enter_context(tls_connection(deployment, *stranger))
                    status = answer_to(connection).status
                except (ssl.SSLError, OSError, AssertionError):
                    turned_away += 1  # closed at the accept, or during the handshake
                    continue
                assert status == 403
            # The cap was reached: the attack was really there.
            assert turned_away >= 10, turned_away
            for connection in idle:
                assert answer_to(connection).status == 200
            upload.sendall(body[len(body) // 2 :])
            uploaded = ResponseStream(upload).next()
            assert uploaded.status == 200, uploaded
            assert uploaded.json()["key_id"] == key_id


def test_one_identity_holds_at_most_its_quota_of_connections(tmp_path: Path) -> None:
    """One worker; an identity may hold 4 connections. The stranger's fifth to seventh are
    answered 429 at once and closed; another identity is served meanwhile; once one of the
    stranger's connections closes, it may open another."""
    with private_server(
        tmp_path, policy=POLICY, workers=1, max_connections_per_identity=4
    ) as server:
        deployment = server.deployment
        stranger = issue_client_certificate(deployment, "stranger", "stranger")
        with ExitStack() as stack:
            held = [stack.enter_context(tls_connection(deployment, *stranger)) for _ in range(4)]
            for connection in held:
                assert answer_to(connection).status == 403
            for _ in range(3):
                refused = stack.enter_context(tls_connection(deployment, *stranger))
                answer = ResponseStream(refused).next()  # sent without waiting for a request
                assert answer.status == 429, answer
                assert answer.json() == {"error": "too many connections"}
                assert answer.headers["connection"] == "close"
                assert closed_by_server(refused)
            # Logged before the answer went out: one line for the three (at most one per 10 s).
            refusals = "refused: CN=stranger holds server.max_connections_per_identity (4)"
            assert server.output().count(refusals) == 1, server.output()
            with closing(KMSClient(deployment)) as client:
                for _ in range(3):
                    client.session.close()  # a new connection each time
                    assert isinstance(expect_json(client.get("/v1/kms/keys"), 200), list)
            held.pop().close()

            def admitted_again() -> bool:
                try:
                    with tls_connection(deployment, *stranger) as connection:
                        return answer_to(connection).status == 403
                except (ssl.SSLError, OSError, AssertionError):
                    return False  # refused again, and closed before it was read

            wait_until(admitted_again, "the stranger's closed connection to be counted out")
