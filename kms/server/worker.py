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

``KMSWorker`` runs the loop, accepts, evicts and enforces the deadlines; what each state does
with its connection is ``kms.server.states``, what a request thread does ``kms.server.serving``.

HTTP/1.1 only: kms does not configure gunicorn's HTTP/2 (``http_protocols`` stays ``h1``).
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import ssl
import time
from pathlib import Path
from typing import Any

from gunicorn.workers import gthread

from kms.server.admission import IdentityCounts, choose_victim
from kms.server.balance import BalancedAccept, ConnectionTable
from kms.server.connection import Connection, State
from kms.server.handshakes import RefusalLog
from kms.server.limits import ServerLimits, current_limits, raise_file_limit
from kms.server.serving import ServesRequests
from kms.server.states import ConnectionStates
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


class KMSWorker(BalancedAccept, ServesRequests, ConnectionStates, gthread.ThreadWorker):
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
