"""The event loop's side of a connection (kms.server.states, kms.server.reading), in process: a
kms worker without a server, driving connections over real socket pairs. No thread, no
gunicorn: what a client sees is what arrives on the other end of its pair, and what an operator
sees is the worker's log and its connection counts."""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Iterator

import pytest
from gunicorn.config import Config

from kms.server.admission import IdentityCounts
from kms.server.connection import Connection, State
from kms.server.limits import ServerLimits
from kms.server.reading import Verdict, examine, note_body_progress
from kms.server.worker import KMSWorker

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Loop(KMSWorker):
    """The event loop's state of a kms worker; a whole request is recorded, not served."""

    dispatched: list[Connection]

    def dispatch(self, conn: Connection) -> None:
        self.dispatched.append(conn)


@pytest.fixture
def loop() -> Iterator[Loop]:
    worker = object.__new__(Loop)
    worker.cfg = Config()
    worker.log = logging.getLogger("kms.tests.states")
    worker.poller = selectors.DefaultSelector()
    worker.limits = ServerLimits()
    worker.held, worker.busy, worker.nr_conns = {}, set(), 0
    worker.identities = IdentityCounts(quota=10)
    worker.connection_table = worker.connection_slot = None
    worker.dispatched = []
    yield worker
    worker.poller.close()


@pytest.fixture
def pairs() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def connect(
    loop: Loop, pairs: list[socket.socket], state: State = State.HEAD
) -> tuple[Connection, socket.socket]:
    """A connection the worker holds, and the client's end of it (blocking, 5 s at most)."""
    server_end, client_end = socket.socketpair()
    pairs += [server_end, client_end]
    server_end.setblocking(False)
    client_end.settimeout(5)
    conn = Connection(server_end, ("127.0.0.1", 40000), None)
    conn.state = state
    loop.held[conn] = None
    loop.nr_conns += 1
    return conn, client_end


def post_head(length: int, *extra: bytes) -> bytes:
    return (
        b"POST /v1/kms/encrypt HTTP/1.1\r\nHost: kms\r\n"
        + b"".join(extra)
        + b"Content-Length: %d\r\n\r\n" % length
    )


def test_a_connection_closed_twice_is_counted_out_once(loop: Loop, pairs: list) -> None:
    conn, _ = connect(loop, pairs)
    other, _ = connect(loop, pairs)
    assert loop.identities.admit("CN=a") and loop.identities.admit("CN=a")
    conn.identity = other.identity = "CN=a"
    loop.close(conn)
    loop.close(conn)  # evicted, then its event in the same batch: nothing more to release
    loop.on_event(conn, selectors.EVENT_READ)
    assert loop.nr_conns == 1 and list(loop.held) == [other]
    assert loop.identities.held("CN=a") == 1


class BrokenSocket:
    """A socket whose read fails with a fault of the worker's own (not a client's)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        raise RuntimeError("a bug")

    def close(self) -> None:
        self.sock.close()


def test_a_fault_in_the_event_loop_costs_one_connection(
    loop: Loop, pairs: list, caplog: pytest.LogCaptureFixture
) -> None:
    conn, _ = connect(loop, pairs)
    other, _ = connect(loop, pairs)
    conn.sock = BrokenSocket(conn.sock)  # type: ignore[assignment]
    loop.on_event(conn, selectors.EVENT_READ)
    assert conn.closed and loop.nr_conns == 1 and list(loop.held) == [other]
    assert "failed in the event loop" in caplog.text


def test_a_body_is_counted_as_it_arrives_and_a_client_that_goes_is_closed(
    loop: Loop, pairs: list, caplog: pytest.LogCaptureFixture
) -> None:
    """The count is what the body deadline and floor rate judge (and the log line says)."""
    conn, client = connect(loop, pairs)
    client.sendall(post_head(100) + b"x" * 10)
    loop.receive(conn)
    assert conn.state is State.BODY and conn.body_have == 10 and conn.body_expected == 100
    client.sendall(b"x" * 20)
    loop.receive(conn)
    assert conn.body_have == 30 and not conn.closed
    client.sendall(b"x" * 5)
    client.shutdown(socket.SHUT_WR)
    with caplog.at_level(logging.WARNING):
        loop.receive(conn)
    assert conn.closed and loop.nr_conns == 0 and not loop.dispatched
    assert "went away during the request body (35 of 100 bytes)" in caplog.text


def test_a_body_awaited_gets_100_continue_once_per_request(loop: Loop, pairs: list) -> None:
    conn, client = connect(loop, pairs)
    expect = b"Expect: 100-continue\r\n"
    client.sendall(post_head(10, expect))
    loop.receive(conn)
    assert conn.state is State.BODY
    assert client.recv(100) == CONTINUE
    client.sendall(b"x" * 3)
    loop.receive(conn)  # more of the same body: no second "100 Continue"
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(100)
    client.settimeout(5)
    # The next request on the kept-alive connection awaits its own body: told again.
    conn.next_request()
    conn.buffer = bytearray()
    conn.enter(State.IDLE)
    client.sendall(post_head(10, expect))
    loop.receive(conn)
    assert conn.state is State.BODY
    assert client.recv(100) == CONTINUE


def test_body_progress_is_noted_only_when_more_of_it_arrived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The body deadline (server.body_timeout) runs from the last byte received."""
    now = [1.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    conn = Connection(None, ("127.0.0.1", 1), None)  # type: ignore[arg-type]
    conn.state = State.HEAD
    note_body_progress(conn)
    assert conn.state is State.BODY and conn.body_last_progress == 1.0
    now[0], conn.body_have = 2.0, 10
    note_body_progress(conn)
    assert conn.body_last_progress == 2.0
    now[0] = 3.0
    note_body_progress(conn)  # nothing new: still 2.0
    assert conn.body_last_progress == 2.0


MIB_16 = 16 * 1024 * 1024


@pytest.mark.parametrize(("over", "dropped"), [(MIB_16, True), (MIB_16 + 1, False)])
def test_a_declared_body_is_dropped_to_keep_the_connection_up_to_16_mib_over_the_limit(
    loop: Loop, pairs: list, over: int, dropped: bool
) -> None:
    """docs/security.md: "Content-Length, up to 16 MiB over the limit"; beyond, the answer
    closes the connection (its "Connection: close" is tests/http/test_server_errors.py's)."""
    conn, _ = connect(loop, pairs)
    conn.buffer += post_head(loop.limits.max_body_bytes + over)
    assert examine(conn, loop.cfg, loop.limits) is Verdict.READY
    assert not conn.body_complete
    assert (conn.discard_to is not None) is dropped


def test_a_discarded_body_is_counted_and_a_client_that_goes_is_closed(
    loop: Loop, pairs: list
) -> None:
    conn, client = connect(loop, pairs, State.WRITE)
    conn.discard_left = 10
    client.sendall(b"x" * 4)
    loop.start_discard(conn)
    assert conn.state is State.DISCARD and not conn.closed
    assert (conn.body_have, conn.body_expected, conn.discard_left) == (4, 10, 6)
    client.shutdown(socket.SHUT_WR)  # the client has its answer and goes
    loop.on_event(conn, selectors.EVENT_READ)
    assert conn.closed and loop.nr_conns == 0


def test_a_discarded_body_is_followed_by_the_next_request(loop: Loop, pairs: list) -> None:
    conn, client = connect(loop, pairs, State.WRITE)
    conn.discard_left = 10
    client.sendall(b"x" * 10 + b"GET /v1/kms/keys HTTP/1.1\r\nHost: kms\r\n\r\n")
    loop.start_discard(conn)
    assert loop.dispatched == [conn] and conn.requests == 1


def test_a_closing_connection_drains_what_the_client_still_sends(loop: Loop, pairs: list) -> None:
    """Lingering: the answer is out and the write side shut; what the client still sends is
    read and dropped (for the sweep's 2 s of State.LINGER), so it gets its answer, not a
    reset; the connection closes once the client does."""
    conn, client = connect(loop, pairs, State.WRITE)
    client.sendall(b"x" * 1000)
    loop.start_linger(conn)
    assert client.recv(100) == b""  # the server's side is shut for writing
    assert conn.state is State.LINGER and not conn.closed and conn.lingered == 1000
    client.sendall(b"x" * 500)
    loop.on_event(conn, selectors.EVENT_READ)
    assert conn.state is State.LINGER and not conn.closed and conn.lingered == 1500
    client.shutdown(socket.SHUT_WR)
    loop.on_event(conn, selectors.EVENT_READ)
    assert conn.closed and loop.nr_conns == 0
