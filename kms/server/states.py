"""What kms's worker does with a connection on its event loop, state by state.

The states, their deadlines and the order of eviction are specified in ``kms.server.worker``'s
docstring; ``KMSWorker`` runs the loop, accepts, evicts and sweeps, and this part (mixed in
before gthread's ``ThreadWorker``) moves one connection through its states: the handshake and
the per-identity quota, the request head and body, the hand-over to a thread
(``kms.server.serving``), the answer's write, then the next request, a discarded body or the
lingering close.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import time
from concurrent import futures
from typing import TYPE_CHECKING, Any, cast

from kms.server.admission import IdentityCounts
from kms.server.connection import AfterWrite, Connection, State
from kms.server.errors import json_error
from kms.server.handshakes import RefusalLog
from kms.server.identity import caller_from_peer_certificate
from kms.server.limits import ServerLimits
from kms.server.logs import escape_log_value
from kms.server.reading import (
    LINGER_MAX_BYTES,
    READ_SIZE,
    Verdict,
    buffer_limit,
    examine,
    note_body_progress,
)
from kms.server.serving import DISCARD_REST

if TYPE_CHECKING:
    from kms.server.writing import ConnectionWriter


class ConnectionStates:
    """The event loop's side of ``KMSWorker``'s connections (``kms.server.serving`` is the
    thread's)."""

    # The worker's (gunicorn's or KMSWorker's).
    alive: bool
    cfg: Any
    log: Any
    poller: Any
    tpool: Any
    method_queue: Any
    nr_conns: int
    limits: ServerLimits
    held: dict[Connection, None]
    busy: set[Connection]
    identities: IdentityCounts
    refused_handshakes: RefusalLog

    if TYPE_CHECKING:
        # kms.server.balance's and kms.server.serving's parts of the worker.
        def publish_connections(self) -> None: ...
        def handle(self, conn: Connection) -> bool | object: ...
        @staticmethod
        def writer_of(conn: Connection) -> ConnectionWriter: ...

    def watch(self, conn: Connection, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self.poller.modify(conn.sock, events, conn)
        else:
            self.poller.register(conn.sock, events, conn)
        conn.events = events

    def unwatch(self, conn: Connection) -> None:
        if conn.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
            conn.events = 0

    def close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.unwatch(conn)
        self.held.pop(conn, None)
        self.busy.discard(conn)
        self.nr_conns -= 1
        if conn.identity is not None:
            self.identities.release(conn.identity)
        self.publish_connections()
        with contextlib.suppress(OSError):
            conn.sock.close()

    def on_event(self, conn: Connection, mask: int) -> None:
        if conn.closed:
            return  # closed earlier in the same batch of events (evicted, for one)
        try:
            if conn.state is State.HANDSHAKE:
                self.continue_handshake(conn)
            elif conn.state is State.LINGER:
                self.continue_linger(conn)
            elif conn.state is State.DISCARD:
                self.continue_discard(conn)
            elif conn.state is State.WRITE:
                self.continue_write(conn)
            elif conn.state in (State.HEAD, State.BODY, State.IDLE):
                self.receive(conn)
        except Exception:
            # A fault here must cost one connection, never the worker and its other clients.
            self.log.exception("connection from ip=%s failed in the event loop", conn.ip)
            if conn in self.held:
                self.close(conn)

    def continue_handshake(self, conn: Connection) -> None:
        try:
            # Only a TLS connection is ever in its handshake.
            cast(ssl.SSLSocket, conn.sock).do_handshake()
        except ssl.SSLWantReadError:
            self.watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self.watch(conn, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as exc:
            # Refused for the client's certificate: one line (kms.server.handshakes).
            line = self.refused_handshakes.line(exc, conn.ip, time.monotonic())
            if line is not None:
                self.log.warning("%s", line)
            else:
                self.log.debug("TLS handshake from ip=%s failed: %s", conn.ip, exc)
            self.close(conn)
            return
        if self.admit(conn):
            self.start_head(conn)

    def admit(self, conn: Connection) -> bool:
        """Count a connection whose handshake is done for its certificate's identity; at the
        identity's quota, answer 429 and close it instead (kms.server.admission)."""
        certificate = conn.sock.getpeercert() if hasattr(conn.sock, "getpeercert") else None
        if not certificate:
            return True  # no certificate, no identity to count (only without TLS)
        identity = str(caller_from_peer_certificate(certificate))
        if self.identities.admit(identity):
            conn.identity = identity
            return True
        if self.identities.refusal_to_log(identity, time.monotonic()):
            self.log.warning(
                "connection from ip=%s refused: %s holds server.max_connections_per_identity "
                "(%d) connections",
                conn.ip,
                escape_log_value(identity),
                self.identities.quota,
            )
        with contextlib.suppress(ssl.SSLError, OSError):
            conn.sock.send(json_error(429, "too many connections"))
        self.start_linger(conn)
        return False

    def start_head(self, conn: Connection) -> None:
        conn.enter(State.HEAD if conn.buffer else State.IDLE if conn.requests else State.HEAD)
        self.watch(conn, selectors.EVENT_READ)
        # TLS may already hold decrypted bytes the selector will not report; the buffer may
        # already hold a pipelined request.
        self.receive(conn)

    def receive(self, conn: Connection) -> None:
        """Read what the socket has, then hand the request to a thread once it is whole."""
        limit = buffer_limit(self.cfg, self.limits)
        got_eof = False
        while len(conn.buffer) < limit:
            try:
                data = conn.sock.recv(READ_SIZE)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                self.watch(conn, selectors.EVENT_READ)
                break
            except ssl.SSLWantWriteError:
                self.watch(conn, selectors.EVENT_WRITE)
                break
            except (ssl.SSLError, OSError) as exc:
                self.client_went_away(conn, str(exc))
                return
            if not data:
                got_eof = True
                break
            conn.buffer += data
            if conn.events != selectors.EVENT_READ:
                self.watch(conn, selectors.EVENT_READ)
        if not conn.buffer:
            if got_eof:
                self.close(conn)
            return
        if conn.state is State.IDLE:
            conn.enter(State.HEAD)
        if (
            conn.whole_at is not None
            and conn.body_expected is not None  # set with whole_at
            and len(conn.buffer) < conn.whole_at
        ):
            # More of a body whose length is known, not all of it: count it, parse nothing.
            conn.body_have = conn.body_expected - (conn.whole_at - len(conn.buffer))
            note_body_progress(conn)
            if got_eof:
                self.client_went_away(conn, "connection closed")
            return
        if examine(conn, self.cfg, self.limits) is Verdict.READY:
            self.dispatch(conn)
        elif got_eof:
            self.client_went_away(conn, "connection closed")

    def client_went_away(self, conn: Connection, reason: str) -> None:
        if conn.state is State.BODY:
            # A client error, not a server fault: one line, no traceback, no access-log entry.
            self.log.warning(
                "client ip=%s went away during the request body (%d of %s bytes): %s",
                conn.ip,
                conn.body_have,
                "?" if conn.body_expected is None else conn.body_expected,
                escape_log_value(reason),
            )
        elif conn.buffer:
            self.log.info("client ip=%s went away during the request head", conn.ip)
        self.close(conn)

    def dispatch(self, conn: Connection) -> None:
        self.unwatch(conn)
        self.held.pop(conn, None)
        self.busy.add(conn)
        conn.enter(State.BUSY)
        if conn.discard_to is not None:
            # The thread gets this request's bytes only; what follows its body is kept.
            conn.discard_left = max(0, conn.discard_to - len(conn.buffer))
            conn.after_discard = bytes(conn.buffer[conn.discard_to :])
            del conn.buffer[conn.discard_to :]
        # The socket stays non-blocking: the thread reads nothing from it and writes through
        # the connection's writer, which never waits (kms.server.writing).
        self.writer_of(conn)
        future = self.tpool.submit(self.handle, conn)
        future.add_done_callback(
            lambda done: self.method_queue.defer(self.finish_request, conn, done)
        )

    def finish_request(self, conn: Connection, future: futures.Future) -> None:
        """Back on the event loop: send what the thread could not, then keep the connection for
        its next request, or close it."""
        self.busy.discard(conn)
        if conn.closed:
            return
        try:
            result = None if future.cancelled() else future.result()
        except Exception:
            result = None
        if result is DISCARD_REST and self.alive:
            conn.after_write = AfterWrite.DISCARD
        elif result is True:
            # The response announced keep-alive (the worker was still alive when it was
            # built), so the client may be sending its next request already: keep the
            # connection, even in a stopping worker, whose drain window (shut_down) answers
            # that request with "Connection: close" instead of closing under the client.
            conn.after_write = AfterWrite.KEEP
        else:
            conn.after_write = AfterWrite.CLOSE
        self.held[conn] = None
        conn.enter(State.WRITE)
        conn.write_progress = conn.since
        try:
            self.continue_write(conn)
        except Exception:
            # As in on_event: one connection lost, never the worker.
            self.log.exception("connection from ip=%s failed in the event loop", conn.ip)
            self.close(conn)

    def continue_write(self, conn: Connection) -> None:
        """Send the rest of the response as the client reads it; the next request of the
        connection is read only once the whole answer is out (one at a time, in order)."""
        writer = conn.writer
        if writer is not None:
            sent = writer.sent
            try:
                done = writer.flush()
            except (ssl.SSLError, OSError, ValueError) as exc:
                # ValueError: a socket the thread closed already (a failed response).
                self.log.debug("client ip=%s went away before its answer: %s", conn.ip, exc)
                self.close(conn)
                return
            if writer.sent > sent:
                conn.write_progress = time.monotonic()
            if not done:
                self.watch(conn, writer.wants)
                return
        if conn.after_write is AfterWrite.DISCARD:
            self.start_discard(conn)
        elif conn.after_write is AfterWrite.KEEP:
            parser = conn.parser
            conn.buffer = bytearray(parser.unreader.take_buffered() if parser else b"")
            conn.next_request()
            self.start_head(conn)
        else:
            self.start_linger(conn)

    def start_discard(self, conn: Connection) -> None:
        # The parser stopped inside the body: the next request gets a fresh one.
        conn.parser = None
        conn.buffer = bytearray(conn.after_discard)
        conn.after_discard = b""
        conn.enter(State.DISCARD)
        conn.body_expected, conn.body_have = conn.discard_left, 0
        conn.body_last_progress = conn.since
        self.watch(conn, selectors.EVENT_READ)
        self.continue_discard(conn)

    def continue_discard(self, conn: Connection) -> None:
        while conn.discard_left > 0:
            try:
                data = conn.sock.recv(min(READ_SIZE, conn.discard_left))
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return
            except (ssl.SSLError, OSError):
                self.close(conn)
                return
            if not data:
                self.close(conn)  # the client has its answer and went: nothing lost
                return
            conn.discard_left -= len(data)
            conn.body_have += len(data)
            conn.body_last_progress = time.monotonic()
        conn.next_request()
        self.start_head(conn)

    def start_linger(self, conn: Connection) -> None:
        conn.enter(State.LINGER)
        conn.buffer = bytearray()
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn)
            return
        self.watch(conn, selectors.EVENT_READ)
        self.continue_linger(conn)

    def continue_linger(self, conn: Connection) -> None:
        while conn.lingered < LINGER_MAX_BYTES:
            try:
                data = conn.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return
            except OSError:
                break
            if not data:
                break
            conn.lingered += len(data)
        self.close(conn)
