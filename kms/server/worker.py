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
   parser and the application read from that buffer, never from the socket. The thread writes
   its answer to the connection's writer (``kms.server.writing``): what the socket takes at once
   goes out at once, the rest is kept, and no thread ever waits on a client.
5. ``WRITE``: back in the event loop, the rest of the answer goes out as the client reads it.
   A client that reads none of it for ``server.write_timeout`` is closed with a log line. The
   connection's next request (pipelined, say) is read only once the answer is out: requests
   on one connection are served one at a time, in order, and a client that never reads holds
   one answer in memory, no thread.
6. ``IDLE``: after a kept-alive response, the connection is back in the event loop until its
   next request starts (gunicorn's ``keepalive`` seconds); an idle connection costs no thread.
7. ``LINGER``: a connection being closed first half-closes and drops what the client still
   sends, for up to 2 seconds, so the client reads the answer instead of a reset.
8. ``DISCARD``: a body of known length over ``server.max_body_bytes`` (up to 16 MiB over it) is
   answered 413 at once; the event loop then reads and drops the rest of it, under the body's
   deadlines, and the connection stays open for the next request.

New connections go to the least loaded worker: a worker that holds more connections than
another leaves the listener to it for a moment (``kms.server.balance``), so a client's pool of
kept-alive connections is shared out evenly instead of landing on whichever worker woke first.

``server.max_connections`` caps the connections of one worker, and
``server.max_connections_per_identity`` those one client identity holds in it
(``kms.server.admission``). At the cap a new connection is still accepted if the worker can
close one that is not yet a client's: still in its handshake, or handshaken but silent and never
answered, the handshakes first, then those of the identity holding the most, the oldest first.
A connection that has completed a request, or whose request is arriving, being served or being
answered, is never closed for a newcomer; if nothing else may go, the newcomer is closed. A
handshake that completes for an identity at its quota is answered 429 and closed. A client that
completes its handshake promptly is therefore served however many connections an attacker
without a certificate holds open, and one certificate's holder cannot take more than its quota.

gunicorn's own error answers (a malformed request line, a line or header over the limits) are
``{"error": "..."}`` JSON like every other kms error (``handle_error``, ``kms.server.errors``).

HTTP/1.1 only: kms does not configure gunicorn's HTTP/2 (``http_protocols`` stays ``h1``).
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import ssl
import time
from concurrent import futures
from pathlib import Path
from typing import Any, cast

from gunicorn.workers import gthread

from kms.server.admission import IdentityCounts, choose_victim
from kms.server.balance import BalancedAccept, ConnectionTable
from kms.server.connection import AfterWrite, Connection, State
from kms.server.errors import json_error
from kms.server.handshakes import RefusalLog
from kms.server.identity import caller_from_peer_certificate
from kms.server.limits import ServerLimits, current_limits, raise_file_limit
from kms.server.logs import escape_log_value
from kms.server.reading import (
    LINGER_MAX_BYTES,
    READ_SIZE,
    Verdict,
    buffer_limit,
    examine,
    note_body_progress,
)
from kms.server.serving import DISCARD_REST, ServesRequests
from kms.server.tls import ReloadableContext, server_context
from kms.server.tls import installed as installed_context
from kms.server.writing import OneWriteResponse

__all__ = ["KMSWorker", "OneWriteResponse", "State"]

#: How long a stopping worker still answers requests arriving on idle kept-alive connections.
DRAIN_SECONDS = 2.0
#: How often deadlines are checked: a deadline is enforced at most this late.
SWEEP_INTERVAL_SECONDS = 0.25
#: A body's first seconds are not held to the floor rate (TCP slow start, a client's own pace).
#: Not shorter: a slow body costs the event loop nothing while it lasts, but each one dropped
#: and reopened costs a TLS handshake (1.75 ms of CPU with OpenSSL 3.0 here). With a 1 s grace
#: scripts/hostile_clients.py opened about 1,750 connections per run, with 5 s about 1,200.
BODY_GRACE_SECONDS = 5.0
#: How long a closing connection drains what its client still sends.
LINGER_SECONDS = 2.0
#: Connections accepted per readiness event of a listener. One, as gunicorn's gthread does, so
#: that the counts kms.server.balance compares are never more than one connection old. Accepting
#: all pending ones at once let the first worker awake take a whole burst: with kept-alive
#: connections one core then served them all while the other idled.
ACCEPT_BATCH = 1


class KMSWorker(BalancedAccept, ServesRequests, gthread.ThreadWorker):
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
        # Connections per client identity, against server.max_connections_per_identity.
        self.identities = IdentityCounts(self.limits.max_connections_per_identity)
        self.refused_handshakes = RefusalLog()

    # -- setup ----------------------------------------------------------------------------

    def init_process(self) -> None:
        raise_file_limit(self.limits.max_connections, self.log)
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
            elif conn.state is State.WRITE and now - conn.write_progress > limits.write_timeout:
                self.log.info("client ip=%s stopped reading its response; closed", conn.ip)
                self.close(conn)
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
                    if not self.evict_one() and self.accept_paused_until is None:
                        # Nothing may be closed: leave the listener alone for a moment.
                        self.pause_accepting()
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
        """Close a connection that is not yet a client's (kms.server.admission); False if there
        is none."""
        victim = choose_victim(self.held, self.identities)
        if victim is None:
            self.log.debug("at server.max_connections: no connection may be closed")
            return False
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
