"""kms's gunicorn worker: no request thread waits on a client.

gunicorn's gthread worker hands a new connection to a thread, which then does the TLS handshake
and reads the request with blocking calls and no deadline: a few dozen clients that connect and
send nothing hold every thread, and the service is down. This worker (derived from gthread, so
the thread pool, the WSGI call and the access log are gunicorn's) keeps a connection in its
event loop, with non-blocking sockets, until a whole request has arrived:

1. ``HANDSHAKE``: the TLS handshake, driven by ``do_handshake`` on each readiness event, within
   ``server.handshake_timeout`` of the accept.
2. ``HEAD``: the request line and headers, within ``server.header_timeout`` of their first byte
   (of the handshake's end, for a connection's first request). gunicorn's own parser checks the
   bytes received so far, so a head it would refuse goes to a thread at once, to be answered.
3. ``BODY``: the request body (Content-Length or chunked), up to ``server.max_body_bytes``. A body
   that stalls for ``server.body_timeout`` or averages less than ``server.body_min_rate`` bytes per
   second after its first 5 seconds is dropped with a log line; so is one whose client goes away.
4. ``BUSY``: only now does a thread get the connection, with every byte already in memory: the
   parser and the application read from that buffer, never from the socket.
5. ``IDLE``: after a kept-alive response, the connection is back in the event loop until its
   next request starts (gunicorn's ``keepalive`` seconds); an idle connection costs no thread.
6. ``LINGER``: a connection being closed first half-closes and drops what the client still
   sends, for up to 2 seconds, so the client reads the answer instead of a reset.
7. ``DISCARD``: a body of known length over ``server.max_body_bytes`` (up to 16 MiB over it) is
   answered 413 at once; the event loop then reads and drops the rest of it, under the body's
   deadlines, and the connection stays open for the next request.

New connections go to the least loaded worker: a worker that holds more connections than
another leaves the listener to it for a moment (``kms.server.balance``), so a client's pool of
kept-alive connections is shared out evenly instead of landing on whichever worker woke first.

``server.max_connections`` caps the connections of one worker. At the cap a new connection is
still accepted: the worker closes the connection that is least likely a working client to make
room, in this order: lingering, still in its handshake, still sending its head or its body, idle
between requests, the oldest first within each; a connection a thread is serving is never closed.
A client that completes its handshake promptly is therefore always served, however many
connections an attacker holds open.

gunicorn's own error answers (a malformed request line, a line or header over the limits) are
``{"error": "..."}`` JSON like every other kms error (``handle_error``, ``kms.server.errors``).

HTTP/1.1 only: kms does not configure gunicorn's HTTP/2 (``http_protocols`` stays ``h1``).
"""

from __future__ import annotations

import contextlib
import errno
import resource
import selectors
import socket
import ssl
import time
from concurrent import futures
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, cast

from gunicorn import util as gunicorn_util
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import IterUnreader
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import gthread

from kms.errors import PayloadTooLarge
from kms.server.balance import YIELD_SECONDS, ConnectionTable
from kms.server.errors import REASONS, error_answer, json_body, json_error
from kms.server.identity import ENVIRON_KEY as CALLER_ENVIRON_KEY
from kms.server.identity import caller_from_peer_certificate
from kms.server.limits import ServerLimits, current_limits
from kms.server.logs import escape_log_value
from kms.server.tls import ReloadableContext, server_context
from kms.server.tls import installed as installed_context

#: How long a stopping worker still answers requests arriving on idle kept-alive connections.
DRAIN_SECONDS = 2.0
#: How often deadlines are checked: a deadline is enforced at most this late.
SWEEP_INTERVAL_SECONDS = 0.25
#: A body's first seconds are not held to the floor rate (TCP slow start, a client's own pace).
#: Not shorter: a slow body costs the event loop nothing while it lasts, but each one dropped
#: and reopened costs a TLS handshake (1.75 ms of CPU with OpenSSL 3.0 here). With a 1 s grace
#: scripts/hostile_clients.py opened about 1,750 connections per run, with 5 s about 1,200.
BODY_GRACE_SECONDS = 5.0
#: How long a closing connection drains what its client still sends, and how much at most.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 16 * 1024 * 1024
#: File descriptors a worker needs besides its client connections (database, logs, pipes).
FILE_DESCRIPTOR_RESERVE = 256
#: Largest single read from a socket in the event loop.
READ_SIZE = 64 * 1024
#: Connections accepted per readiness event of a listener. One, as gunicorn's gthread does, so
#: that the counts kms.server.balance compares are never more than one connection old. Accepting
#: all pending ones at once let the first worker awake take a whole burst: with kept-alive
#: connections one core then served them all while the other idled.
ACCEPT_BATCH = 1
#: Chunked framing may add this much to a body (chunk size lines, trailers) beyond its payload,
#: and a chunked body may take up to CHUNKED_WIRE_FACTOR times its limit on the wire (small
#: chunks); more is refused with 413, which bounds the memory one connection can take.
CHUNKED_FRAMING_ALLOWANCE = 64 * 1024
CHUNKED_WIRE_FACTOR = 2

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: What a thread returns when the rest of an over-limit body is to be dropped by the event loop.
_DISCARD_REST = object()


class State(Enum):
    HANDSHAKE = "handshake"
    HEAD = "head"
    BODY = "body"
    IDLE = "idle"
    BUSY = "busy"
    LINGER = "linger"
    DISCARD = "discard"


# Which connection to close first at the cap (lower first); BUSY is never closed.
_EVICTION_RANK = {
    State.LINGER: 0,
    State.HANDSHAKE: 1,
    State.HEAD: 2,
    State.BODY: 2,
    State.DISCARD: 2,
    State.IDLE: 3,
}


class Connection:
    """One client connection and what the event loop knows about it."""

    def __init__(self, sock: socket.socket, client: Any, server: Any) -> None:
        self.sock = sock
        self.client = client
        self.server = server
        self.state = State.HANDSHAKE
        self.since = time.monotonic()
        self.events = 0
        self.buffer = bytearray()
        self.parser: RequestParser | None = None
        self.requests = 0
        # The request being received, once its head is complete.
        self.body_have = 0
        self.body_expected: int | None = None
        self.body_last_progress = 0.0
        self.continue_sent = False
        # Set when the whole request is in ``buffer``; else the rest of an over-limit body is
        # dropped after the answer (DISCARD) or the connection closes (LINGER).
        self.body_complete = True
        self.body_error: Exception | None = None
        self.lingered = 0
        self.progress_mark = 0
        self.closed = False
        # An over-limit body of known length answered 413: where it ends (counted from the
        # request's first byte), and how much of it is still to be read and dropped.
        self.discard_to: int | None = None
        self.discard_left = 0
        self.after_discard = b""
        # A body of known length still arriving: the buffer size at which the request is whole.
        # Until then each read only counts bytes, without parsing the head again.
        self.whole_at: int | None = None
        # The request as the event loop parsed it, once whole, with the unreader holding its
        # bytes: the thread serves it as it is instead of parsing the same bytes a second time.
        self.parsed: tuple[IterUnreader, Request] | None = None

    @property
    def ip(self) -> str:
        if isinstance(self.client, tuple) and self.client:
            return str(self.client[0])
        return str(self.client)

    def enter(self, state: State) -> None:
        self.state = state
        self.since = time.monotonic()

    def next_request(self) -> None:
        """Forget the request just served (a kept-alive connection's next one may follow)."""
        self.requests += 1
        self.continue_sent = False
        self.progress_mark = 0
        self.whole_at = None
        self.parsed = None


class OneWriteResponse(Response):
    """gunicorn's HTTP/1.1 response, but the head goes out with the body's first bytes in one
    ``sendall``.

    gunicorn writes the head and then each body chunk: under TLS each write is a record of its
    own (its own encryption and tag, its own syscall, a wakeup of the client for the head alone).
    A kms answer is one JSON body, so the whole response is one write, one record up to 16 KiB.
    Anything unusual (chunked, a body the response must not have, one longer than its
    Content-Length, an empty first chunk) goes through gunicorn's own ``write``.
    """

    headers_sent: bool  # gunicorn's, which has no type information

    def write(self, arg: bytes) -> None:
        if (
            self.headers_sent
            or not isinstance(arg, bytes)
            or not arg
            or self.chunked
            or self._omits_body
            or (self.response_length is not None and len(arg) > self.response_length)
        ):
            super().write(arg)
            return
        gunicorn_util.write(self.sock, self.head_bytes() + arg)
        self.headers_sent = True
        self.sent += len(arg)

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        gunicorn_util.write(self.sock, self.head_bytes())
        self.headers_sent = True

    def head_bytes(self) -> bytes:
        # As gunicorn's send_headers builds it.
        lines = self.default_headers()
        lines.extend([f"{name}: {value}\r\n" for name, value in self.headers])
        return gunicorn_util.to_bytestring("{}\r\n".format("".join(lines)), "latin-1")


class _Verdict(Enum):
    NEED_MORE = "need more"
    READY = "ready"


class KMSWorker(gthread.ThreadWorker):
    """gthread with TLS handshakes, request heads and bodies read by the event loop."""

    alive: bool  # gunicorn's, which has no type information

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits: ServerLimits = current_limits()
        self.tls: ReloadableContext | None = None
        # Connections the event loop holds (every state but BUSY); insertion-ordered.
        self.held: dict[Connection, None] = {}
        self.busy: set[Connection] = set()
        self.next_sweep = 0.0
        # Set by the master before the fork (kms.server.balance.assign_slot); None: no balancing.
        self.connection_slot: int | None = None
        self.connection_table: ConnectionTable | None = None
        # While more loaded than another worker, the listeners are not polled until this time.
        self.accept_paused_until: float | None = None
        # The other workers' counts when a pause began; kept after a pause in which none of them
        # moved (they are not accepting): no more pauses until they do.
        self.others_at_pause: bytes | None = None
        self.others_not_accepting = False

    # -- setup ----------------------------------------------------------------------------

    def init_process(self) -> None:
        self.raise_file_limit()
        if self.cfg.is_ssl:
            # One context per worker (gunicorn would build one, and load the keys, per
            # connection), rebuilt when its files change (kms.server.tls). The master's, as it
            # was at the fork: a worker booting while the files are half replaced still serves.
            inherited = installed_context()
            if inherited is not None:
                inherited.quiet = True  # the master logs each change once
                self.tls = inherited
            else:
                self.tls = ReloadableContext(
                    self.build_ssl_context,
                    [Path(self.cfg.certfile), Path(self.cfg.keyfile), Path(self.cfg.ca_certs)],
                    self.log,
                )
        super().init_process()

    def context_for_connection(self, tls: ReloadableContext) -> ssl.SSLContext:
        """The worker's cached context; with ``server.tls_context_cache: false`` a new one per
        connection, as gunicorn's stock workers build it (only to measure the difference)."""
        if self.limits.tls_context_cache:
            return tls.current()
        return self.build_ssl_context()

    def build_ssl_context(self) -> ssl.SSLContext:
        return server_context(self.cfg)

    def raise_file_limit(self) -> None:
        """Let the soft open-file limit fit ``server.max_connections`` (up to the hard limit).

        systemd's default soft limit is 1024, less than the default cap plus the database's and
        gunicorn's own descriptors; raising the soft limit up to the hard one needs no privilege.
        """
        needed = self.limits.max_connections + FILE_DESCRIPTOR_RESERVE
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
        if soft != resource.RLIM_INFINITY and soft < needed:
            self.log.warning(
                "open-file limit %d is below server.max_connections + %d; raise LimitNOFILE",
                soft,
                FILE_DESCRIPTOR_RESERVE,
            )

    @property
    def max_head_bytes(self) -> int:
        line = self.cfg.limit_request_line or 8190
        fields = self.cfg.limit_request_fields or 100
        field_size = self.cfg.limit_request_field_size or 8190
        return line + 2 + fields * (field_size + 2) + 4

    # -- the event loop -------------------------------------------------------------------

    def run(self) -> None:
        self.poller.register(
            self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks
        )
        for listener in self.sockets:
            listener.setblocking(False)
            self.poller.register(listener, selectors.EVENT_READ, self.accept)
        while self.alive:
            self.notify()
            timeout = SWEEP_INTERVAL_SECONDS
            if self.accept_paused_until is not None:
                timeout = max(0.0, min(timeout, self.accept_paused_until - time.monotonic()))
            self.wait_for_and_dispatch_events(timeout=timeout)
            if self.accept_paused_until is not None:
                self.maybe_resume_accepting(self.accept_paused_until)
            self.sweep()
            if not self.is_parent_alive():
                break
        self.shut_down()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        try:
            events = self.poller.select(timeout)
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise
            return
        for key, mask in events:
            if isinstance(key.data, Connection):
                self.on_event(key.data, mask)
            else:
                key.data(key.fileobj)

    def shut_down(self) -> None:
        """Stop accepting; finish the requests already arriving, within the graceful timeout.

        A request whose head or body is arriving is still received (under its deadlines) and
        answered, with "Connection: close". Connections in their handshake or idle between
        requests are kept for a short drain window first: a client that sends its next request
        on a kept-alive connection just as the worker stops (a SIGHUP reload) is answered, with
        "Connection: close", instead of finding the connection reset under it.
        """
        # What a graceful stop waits for, so an operator can tell a slow stop from a hung one.
        self.log.info(
            "worker stopping (requests arriving: %d, being answered: %d)",
            sum(conn.state in (State.HEAD, State.BODY) for conn in self.held),
            len(self.busy),
        )
        if self.accept_paused_until is None:
            for listener in self.sockets:
                with contextlib.suppress(KeyError, ValueError):
                    self.poller.unregister(listener)
        self.accept_paused_until = None
        if self.connection_table is not None and self.connection_slot is not None:
            # A stopping worker takes no new connection: the others must not leave any to it.
            self.connection_table.release(self.connection_slot)
            self.connection_slot = None
        started = time.monotonic()
        deadline = started + self.cfg.graceful_timeout
        drained = started + min(DRAIN_SECONDS, self.cfg.graceful_timeout)
        while time.monotonic() < deadline:
            waiting: tuple[State, ...] = (State.HANDSHAKE, State.IDLE, State.DISCARD)
            if time.monotonic() < drained:
                waiting = (State.DISCARD,)
            for conn in list(self.held):
                if conn.state in waiting:
                    self.close(conn)
            if not self.busy and not self.held:
                break
            self.notify()
            self.wait_for_and_dispatch_events(timeout=SWEEP_INTERVAL_SECONDS)
            self.sweep()
        for conn in list(self.held):
            self.close(conn)
        self.tpool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()
        for listener in self.sockets:
            listener.close()

    def sweep(self) -> None:
        """Close the connections past their deadline."""
        now = time.monotonic()
        if now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_INTERVAL_SECONDS
        limits = self.limits
        for conn in list(self.held):
            age = now - conn.since
            if conn.state is State.HANDSHAKE and age > limits.handshake_timeout:
                self.log.debug("TLS handshake from ip=%s timed out", conn.ip)
                self.close(conn)
            elif conn.state is State.HEAD and age > limits.header_timeout:
                self.log.info("request head from ip=%s not complete in time; closed", conn.ip)
                self.close(conn)
            elif conn.state is State.IDLE and age > self.cfg.keepalive:
                self.close(conn)
            elif conn.state in (State.BODY, State.DISCARD):
                self.check_body_pace(conn, now)
            elif conn.state is State.LINGER and age > LINGER_SECONDS:
                self.close(conn)

    def check_body_pace(self, conn: Connection, now: float) -> None:
        limits = self.limits
        stalled = now - conn.body_last_progress > limits.body_timeout
        elapsed = now - conn.since
        floor = limits.body_min_rate * (elapsed - BODY_GRACE_SECONDS)
        if stalled or (limits.body_min_rate and conn.body_have < floor):
            self.log.warning(
                "request body from ip=%s dropped: %s after %d of %s bytes in %.1f s",
                conn.ip,
                "stalled" if stalled else "slower than the floor rate",
                conn.body_have,
                "?" if conn.body_expected is None else conn.body_expected,
                elapsed,
            )
            self.close(conn)

    # -- sharing new connections with the other workers (kms.server.balance) --------------

    def more_loaded_than_another(self) -> bool:
        table, slot = self.connection_table, self.connection_slot
        if table is None or slot is None:
            return False
        if self.others_not_accepting:
            if table.others(slot) == self.others_at_pause:
                return False
            self.others_not_accepting = False
        fewest = table.fewest_elsewhere(slot)
        return fewest is not None and self.nr_conns > fewest

    def publish_connections(self) -> None:
        if self.connection_table is not None and self.connection_slot is not None:
            self.connection_table.publish(self.connection_slot, self.nr_conns)

    def pause_accepting(self) -> None:
        for listener in self.sockets:
            with contextlib.suppress(KeyError, ValueError):
                self.poller.unregister(listener)
        self.accept_paused_until = time.monotonic() + YIELD_SECONDS
        if self.connection_table is not None and self.connection_slot is not None:
            self.others_at_pause = self.connection_table.others(self.connection_slot)

    def maybe_resume_accepting(self, paused_until: float) -> None:
        ran_out = time.monotonic() >= paused_until
        if not ran_out and self.more_loaded_than_another():
            return
        self.accept_paused_until = None
        if ran_out and self.connection_table is not None and self.connection_slot is not None:
            # Nobody took the pending connections: until another count moves, take them all.
            self.others_not_accepting = (
                self.connection_table.others(self.connection_slot) == self.others_at_pause
            )
        for listener in self.sockets:
            if ran_out:
                # The others had their chance: a connection still pending is this worker's.
                self.accept_connections(listener)
            self.poller.register(listener, selectors.EVENT_READ, self.accept)
        self.publish_connections()

    # -- connections in the loop ----------------------------------------------------------

    def accept(self, listener: Any) -> None:
        if self.more_loaded_than_another():
            self.pause_accepting()
            return
        self.accept_connections(listener)
        self.publish_connections()

    def accept_connections(self, listener: Any) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                client_sock, client_addr = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    # Out of file descriptors: free one, as at the cap, so the listener's next
                    # readiness can be served (and the loop does not spin on it).
                    self.log.warning("cannot accept a connection: %s", exc.strerror)
                    self.evict_one()
                    return
                # Anything else (ENOBUFS, ENOMEM, ...) costs this accept, not the worker.
                self.log.warning("cannot accept a connection: %s", exc.strerror)
                return
            if self.nr_conns >= self.limits.max_connections and not self.evict_one():
                client_sock.close()
                continue
            self.nr_conns += 1
            client_sock.setblocking(False)
            server_addr = listener.getsockname()
            if self.tls is not None:
                try:
                    wrapped = self.context_for_connection(self.tls).wrap_socket(
                        client_sock,
                        server_side=True,
                        do_handshake_on_connect=False,
                        suppress_ragged_eofs=self.cfg.suppress_ragged_eofs,
                    )
                except OSError:
                    self.nr_conns -= 1
                    client_sock.close()
                    continue
                conn = Connection(wrapped, client_addr, server_addr)
                self.held[conn] = None
                self.watch(conn, selectors.EVENT_READ)
            else:
                conn = Connection(client_sock, client_addr, server_addr)
                self.held[conn] = None
                self.start_head(conn)

    def evict_one(self) -> bool:
        """Close the held connection least likely to be a working client; False if none."""
        candidates = [conn for conn in self.held if conn.state in _EVICTION_RANK]
        if not candidates:
            return False
        victim = min(candidates, key=lambda conn: (_EVICTION_RANK[conn.state], conn.since))
        self.log.debug("at server.max_connections: closing a %s connection", victim.state.value)
        self.close(victim)
        return True

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
            self.log.debug("TLS handshake from ip=%s failed: %s", conn.ip, exc)
            self.close(conn)
            return
        self.start_head(conn)

    def start_head(self, conn: Connection) -> None:
        conn.enter(State.HEAD if conn.buffer else State.IDLE if conn.requests else State.HEAD)
        self.watch(conn, selectors.EVENT_READ)
        # TLS may already hold decrypted bytes the selector will not report; the buffer may
        # already hold a pipelined request.
        self.receive(conn)

    def receive(self, conn: Connection) -> None:
        """Read what the socket has, then hand the request to a thread once it is whole."""
        limit = (
            self.max_head_bytes
            + CHUNKED_WIRE_FACTOR * self.limits.max_body_bytes
            + CHUNKED_FRAMING_ALLOWANCE
        )
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
            self.note_body_progress(conn)
            if got_eof:
                self.client_went_away(conn, "connection closed")
            return
        if self.examine(conn) is _Verdict.READY:
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

    def examine(self, conn: Connection) -> _Verdict:
        """Whether ``conn.buffer`` holds a whole request (or one a thread must refuse)."""
        conn.body_have, conn.body_expected = 0, None
        conn.body_complete, conn.body_error = True, None
        conn.discard_to = None
        conn.whole_at = None
        conn.parsed = None
        data = bytes(conn.buffer)
        unreader = IterUnreader([data])
        try:
            request = Request(self.cfg, unreader, conn.client, conn.requests + 1)
        except (http_errors.NoMoreData, StopIteration):
            # A head larger than any the parser accepts would have raised already; this is a
            # backstop, and the thread's parser then refuses it.
            return _Verdict.READY if len(data) > self.max_head_bytes else _Verdict.NEED_MORE
        except Exception:
            # The thread parses the same bytes, gets the same error and answers it.
            return _Verdict.READY
        rest = unreader.buf.getvalue()
        reader = request.body.reader if request.body is not None else None
        max_body = self.limits.max_body_bytes
        if isinstance(reader, LengthReader):
            conn.body_expected = reader.length
            conn.body_have = min(len(rest), reader.length)
            if reader.length > max_body:
                # The application answers 413 from the Content-Length alone; the event loop
                # drops the body afterwards if that is cheap enough to keep the connection.
                conn.body_complete = False
                if reader.length - max_body <= LINGER_MAX_BYTES:
                    conn.discard_to = len(data) - len(rest) + reader.length
                return _Verdict.READY
            if len(rest) >= reader.length:
                conn.parsed = (unreader, request)
                return _Verdict.READY
            conn.whole_at = len(data) - len(rest) + reader.length
        elif isinstance(reader, ChunkedReader):
            conn.body_have = len(rest)
            verdict = self.examine_chunked(conn, request, rest)
            if verdict is not None:
                return verdict
        else:
            conn.parsed = (unreader, request)
            return _Verdict.READY
        self.await_body(conn, request)
        return _Verdict.NEED_MORE

    def examine_chunked(self, conn: Connection, request: Request, rest: bytes) -> _Verdict | None:
        max_body = self.limits.max_body_bytes
        over_size = len(rest) > CHUNKED_WIRE_FACTOR * max_body + CHUNKED_FRAMING_ALLOWANCE
        # A whole chunked body ends with CRLF: only then (or when too much arrived) is it worth
        # decoding the body so far.
        if not rest.endswith(b"\r\n") and len(rest) <= max_body + CHUNKED_FRAMING_ALLOWANCE:
            return None
        decoded = 0
        try:
            while piece := request.body.read(READ_SIZE):
                decoded += len(piece)
                if decoded > max_body:
                    break
        except http_errors.NoMoreData:
            if not over_size and decoded <= max_body:
                return None
        except Exception as exc:
            conn.body_error = exc
            conn.body_complete = False
            return _Verdict.READY
        if decoded > max_body or over_size:
            conn.body_error = PayloadTooLarge()
            conn.body_complete = False
        return _Verdict.READY

    def await_body(self, conn: Connection, request: Request) -> None:
        self.note_body_progress(conn)
        if request._expected_100_continue and not conn.continue_sent:
            # Clients that wait for it send their body only then; the request is short.
            conn.continue_sent = True
            with contextlib.suppress(ssl.SSLError, OSError):
                conn.sock.send(_CONTINUE)

    @staticmethod
    def note_body_progress(conn: Connection) -> None:
        now = time.monotonic()
        if conn.state is not State.BODY:
            conn.enter(State.BODY)
            conn.body_last_progress = now
            conn.progress_mark = conn.body_have
        elif conn.body_have > conn.progress_mark:
            conn.body_last_progress = now
            conn.progress_mark = conn.body_have

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
        conn.sock.settimeout(self.limits.body_timeout)
        future = self.tpool.submit(self.handle, conn)
        future.add_done_callback(
            lambda done: self.method_queue.defer(self.finish_request, conn, done)
        )

    def finish_request(self, conn: Connection, future: futures.Future) -> None:
        """Back on the event loop: keep the connection for its next request, or close it."""
        self.busy.discard(conn)
        try:
            result = None if future.cancelled() else future.result()
        except Exception:
            result = None
        keepalive = result is True
        self.held[conn] = None
        try:
            conn.sock.setblocking(False)
            if result is _DISCARD_REST and self.alive:
                self.start_discard(conn)
            elif keepalive:
                # The response announced keep-alive (the worker was still alive when it was
                # built), so the client may be sending its next request already: keep the
                # connection, even in a stopping worker, whose drain window (shut_down) answers
                # that request with "Connection: close" instead of closing under the client.
                parser = conn.parser
                conn.buffer = bytearray(parser.unreader.take_buffered() if parser else b"")
                conn.next_request()
                self.start_head(conn)
            else:
                self.start_linger(conn)
        except Exception:
            # As in on_event: one connection lost, never the worker.
            self.log.exception("connection from ip=%s failed in the event loop", conn.ip)
            self.close(conn)

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

    # -- in a thread ----------------------------------------------------------------------

    def handle(self, conn: Connection) -> bool | object:
        """Serve the one request in ``conn.buffer``; True to keep the connection.

        ``_DISCARD_REST`` keeps it too, once the event loop has dropped the rest of the body.
        """
        request = None
        try:
            if conn.parser is None:
                # Its source is empty: the parser reads only what the event loop received.
                conn.parser = RequestParser(self.cfg, iter(()), conn.client)
            if conn.parsed is not None:
                # Parsed whole by the event loop (examine): the parser takes that request and
                # the unreader that holds its body and whatever was pipelined after it.
                conn.parser.unreader, request = conn.parsed
                conn.parser.mesg = request
                conn.parser.req_count = request.req_number
                conn.parsed = None
            else:
                conn.parser.unreader.unread(bytes(conn.buffer))
                request = next(conn.parser)
            conn.buffer = bytearray()
            # The event loop answered "Expect: 100-continue" already, if it was needed.
            request._expected_100_continue = False
            if conn.body_error is not None:
                self.handle_error(request, conn.sock, conn.client, conn.body_error)
                return False
            if not conn.body_complete and conn.discard_to is None:
                # The rest of the body is still on its way and too long to wait for: the
                # event loop drops it after the answer (LINGER), which says "Connection: close".
                request.force_close()
            keepalive = self.handle_request(request, conn)
            if not keepalive:
                return False
            if not conn.body_complete:
                return _DISCARD_REST
            return bool(conn.parser.finish_body())
        except http_errors.NoMoreData as exc:
            self.log.debug("client went away: %s", exc)
        except StopIteration:
            pass
        except TimeoutError:
            self.log.info("client ip=%s stopped reading its response; closed", conn.ip)
        except ssl.SSLError as exc:
            self.log.debug("TLS error from ip=%s: %s", conn.ip, exc)
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.debug("client ip=%s went away", conn.ip)
            else:
                self.log.exception("socket error serving ip=%s", conn.ip)
        except Exception as exc:
            self.handle_error(request, conn.sock, conn.client, exc)
        return False

    def handle_request(self, req: Request, conn: Connection) -> bool:
        """gthread's ``handle_request``, with the response written in one piece
        (``OneWriteResponse``); True to keep the connection."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(
                req, conn.sock, conn.client, conn.server, self.cfg, OneWriteResponse
            )
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            full = len(self.keepalived_conns) >= self.max_keepalived
            if not self.alive or not self.cfg.keepalive or full:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                request_time = datetime.now() - request_start
                self.log.access(resp, req, environ, request_time)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                # Timeout abort is SystemExit. If the response was begun, writing a 500 on the
                # same socket would corrupt it.
                self.log.exception("Error handling request")
                gunicorn_util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
        return True

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's error answers as kms JSON: ``{"error": "..."}``, a 4xx for the client's."""
        status, message = error_answer(exc)
        addr = addr or ("", -1)
        ip = addr[0] if isinstance(addr, tuple) else addr
        if status >= 500:
            if getattr(req, "uri", None) is not None:
                self.log.exception(
                    "error handling request %s %s", req.method, escape_log_value(req.uri)
                )
            else:
                self.log.exception("error handling request (no URI read)")
        else:
            detail = escape_log_value(str(exc))
            self.log.warning('invalid request from ip=%s: %s: "%s"', ip, message, detail)
            if req is None and hasattr(exc, "req"):
                req = exc.req
        if req is not None and getattr(req, "method", None) is not None:
            self.access_log_error(req, client, addr, status, message)
        try:
            client.sendall(json_error(status, message))
        except Exception:
            self.log.debug("could not send the error answer")

    def access_log_error(self, req: Any, client: Any, addr: Any, status: int, message: str) -> None:
        try:
            environ = default_environ(req, client, self.cfg)
            certificate = client.getpeercert() if hasattr(client, "getpeercert") else None
            if certificate:
                environ[CALLER_ENVIRON_KEY] = caller_from_peer_certificate(certificate)
            environ["REMOTE_ADDR"] = addr[0]
            environ["REMOTE_PORT"] = str(addr[1])
            resp = Response(req, client, self.cfg)
            resp.status = f"{status} {REASONS.get(status, 'Error')}"
            resp.sent = len(json_body(message))
            self.log.access(resp, req, environ, timedelta(0))
        except Exception:
            self.log.debug("could not write the access log line of a refused request")
