"""The load generator: client processes, each driving its connections from one event loop.

It shares the machine's cores with the server it measures, so it does as little as it can per
request: requests are encoded once before the clock starts, each connection is a raw
``ssl.SSLSocket`` (no HTTP library), and a response is parsed only as far as its status code and
``Content-Length``. Every connection has one request in flight at a time (no pipelining); the
latency of a request runs from its first byte sent (or, without keep-alive, from the TCP connect)
to its last byte received, and it counts in the window in which its answer arrives.

Only 127.0.0.1 may be a target: this tool makes as many requests as a server will answer, and
must never be pointed at someone else's.
"""

from __future__ import annotations

import multiprocessing
import selectors
import signal
import socket
import ssl
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The only address the load generator connects to.
LOOPBACK = "127.0.0.1"
READ_SIZE = 256 * 1024
#: Safety limit for a single response and for the processes to report; never an assertion.
STALL_SECONDS = 120.0


class BenchError(RuntimeError):
    """The benchmark cannot go on (a refused target, a server error, a stalled server)."""


@dataclass(frozen=True)
class Client:
    """Where to connect and with which certificate."""

    port: int
    ca: Path
    cert: Path
    key: Path
    host: str = LOOPBACK

    def __post_init__(self) -> None:
        if self.host != LOOPBACK:
            raise BenchError(f"the load generator only targets {LOOPBACK}, not {self.host!r}")

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def connect(self, context: ssl.SSLContext) -> ssl.SSLSocket:
        """A blocking connection with its handshake done (for set-up requests)."""
        raw = socket.create_connection((self.host, self.port), timeout=STALL_SECONDS)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return context.wrap_socket(raw, server_hostname="localhost")


def encode_request(method: str, path: str, body: bytes = b"", *, keep_alive: bool = True) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def parse_response(buffer: bytes | bytearray) -> tuple[int, int] | None:
    """(status, total length) once the head is in ``buffer``; None before that."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    status = int(head[9:12])
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise BenchError(f"a response without Content-Length: {bytes(buffer[:200])!r}")
    stop = head.find(b"\r\n", at + 2)
    length = int(head[at + 17 : stop if stop >= 0 else len(head)])
    return status, end + 4 + length


def request_once(client: Client, request: bytes) -> tuple[int, bytes]:
    """One request on a new blocking connection (set-up work: creating keys and so on)."""
    with client.connect(client.context()) as sock:
        sock.sendall(request)
        buffer = bytearray()
        while True:
            parsed = parse_response(buffer)
            if parsed is not None and len(buffer) >= parsed[1]:
                end = buffer.find(b"\r\n\r\n") + 4
                return parsed[0], bytes(buffer[end : parsed[1]])
            data = sock.recv(READ_SIZE)
            if not data:
                raise BenchError("the server closed the connection before answering")
            buffer += data


@dataclass(frozen=True)
class Load:
    """What the client processes send, and how."""

    requests: Sequence[bytes]
    processes: int = 2
    connections: int = 4  # per process
    keep_alive: bool = True
    #: A substring every response body must hold (e.g. b'"valid":true'); empty: status 200 only.
    expect: bytes = b""
    #: A substring no response may hold (b'"error"' for a batch, whose failed items still get 200).
    reject: bytes = b""
    #: Send each request once, then stop (the run still ends at its deadline if not done).
    once: bool = False


@dataclass
class Measured:
    latencies: array = field(default_factory=lambda: array("d"))  # seconds
    errors: int = 0
    first_error: str = ""
    #: Every answered request, warm-up and stragglers included (the memory scenario counts keys).
    answered: int = 0


@dataclass
class _Conn:
    sock: ssl.SSLSocket | None = None
    state: str = "idle"  # handshake, send, read
    out: memoryview | None = None
    buffer: bytearray = field(default_factory=bytearray)
    started: float = 0.0
    next_index: int = 0
    step: int = 1


def _drive(
    client: Client,
    load: Load,
    offset: int,
    ready: multiprocessing.Barrier,
    timing: multiprocessing.Array,
    results: multiprocessing.Queue,
) -> None:
    """One client process: ``load.connections`` connections over one selector."""
    # The parent stops the run (SIGINT, SIGTERM); a client just ends with it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    context = client.context()
    selector = selectors.DefaultSelector()
    requests = load.requests
    count = len(requests)
    # Connection g of n sends requests g, g + n, g + 2n, ...: together they walk the list once
    # before any request repeats (the cold-key scenarios rely on it).
    step = load.processes * load.connections
    conns = [
        _Conn(next_index=offset * load.connections + i, step=step) for i in range(load.connections)
    ]
    measured = Measured()
    try:
        ready.wait(STALL_SECONDS)
        start_at, measure_from, measure_to = timing[0], timing[1], timing[2]
        # CLOCK_MONOTONIC is one clock for every process of the machine.
        while time.monotonic() < start_at:
            time.sleep(0.005)
        stop = measure_to
        for conn in conns:
            if not load.once or conn.next_index < count:
                _start_request(client, context, selector, conn, requests, count, load.keep_alive)
        while selector.get_map():
            events = selector.select(STALL_SECONDS)
            if not events:
                raise BenchError(f"the server answered nothing for {STALL_SECONDS:.0f} s")
            for key, _mask in events:
                conn = key.data
                if not _advance(selector, conn):
                    continue
                # A whole response is in: record it, then start the next request (or stop).
                done = time.monotonic()
                parsed = parse_response(conn.buffer)
                status = parsed[0] if parsed else 0
                body_ok = (not load.expect or load.expect in conn.buffer) and (
                    not load.reject or load.reject not in conn.buffer
                )
                if status != 200 or not body_ok:
                    measured.errors += 1
                    if not measured.first_error:
                        measured.first_error = bytes(conn.buffer[:300]).decode("latin-1")
                elif measure_from <= done <= measure_to:
                    measured.latencies.append(done - conn.started)
                measured.answered += 1
                conn.buffer = bytearray()
                if not load.keep_alive:
                    _close(selector, conn)
                if done >= stop or (load.once and conn.next_index >= count):
                    if conn.sock is not None:
                        _close(selector, conn)
                    continue
                _start_request(client, context, selector, conn, requests, count, load.keep_alive)
        results.put(
            (
                offset,
                measured.latencies.tobytes(),
                measured.errors,
                measured.first_error,
                measured.answered,
            )
        )
    except Exception as error:  # reported to the parent, which stops the run
        results.put((offset, b"", -1, f"{type(error).__name__}: {error}", 0))
    finally:
        for conn in conns:
            if conn.sock is not None:
                conn.sock.close()


def _start_request(
    client: Client,
    context: ssl.SSLContext,
    selector: selectors.BaseSelector,
    conn: _Conn,
    requests: Sequence[bytes],
    count: int,
    keep_alive: bool,
) -> None:
    conn.started = time.monotonic()
    conn.out = memoryview(requests[conn.next_index % count])
    conn.next_index += conn.step
    if conn.sock is None:
        raw = socket.create_connection((client.host, client.port), timeout=STALL_SECONDS)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setblocking(False)
        conn.sock = context.wrap_socket(
            raw, server_hostname="localhost", do_handshake_on_connect=False
        )
        conn.state = "handshake"
        selector.register(conn.sock, selectors.EVENT_WRITE, conn)
        return
    conn.state = "send"
    selector.modify(conn.sock, selectors.EVENT_WRITE, conn)


def _close(selector: selectors.BaseSelector, conn: _Conn) -> None:
    if conn.sock is not None:
        selector.unregister(conn.sock)
        conn.sock.close()
        conn.sock = None


def _advance(selector: selectors.BaseSelector, conn: _Conn) -> bool:
    """Do what the connection's readiness allows; True once its whole response is in."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        if conn.state == "handshake":
            sock.do_handshake()
            conn.state = "send"
        if conn.state == "send":
            while conn.out is not None and conn.out:
                sent = sock.send(conn.out)
                conn.out = conn.out[sent:]
            conn.state = "read"
            selector.modify(sock, selectors.EVENT_READ, conn)
        while True:
            data = sock.recv(READ_SIZE)
            if not data:
                raise BenchError("the server closed a connection before answering")
            conn.buffer += data
            parsed = parse_response(conn.buffer)
            if parsed is not None and len(conn.buffer) >= parsed[1]:
                return True
    except ssl.SSLWantReadError:
        selector.modify(sock, selectors.EVENT_READ, conn)
    except ssl.SSLWantWriteError:
        selector.modify(sock, selectors.EVENT_WRITE, conn)
    except BlockingIOError:
        pass
    return False


def run_load(client: Client, load: Load, warmup: float, seconds: float) -> Measured:
    """Send ``load`` for ``warmup`` seconds, then measure for ``seconds``; all processes'
    latencies together. Raises ``BenchError`` if any request failed."""
    fork = multiprocessing.get_context("fork")
    ready = fork.Barrier(load.processes + 1)
    timing = fork.Array("d", 3, lock=False)
    results: multiprocessing.Queue = fork.Queue()
    processes = [
        fork.Process(target=_drive, args=(client, load, index, ready, timing, results), daemon=True)
        for index in range(load.processes)
    ]
    for process in processes:
        process.start()
    # The processes start sending together, warm up, and are measured over the same window.
    start_at = time.monotonic() + 0.3
    timing[0], timing[1], timing[2] = start_at, start_at + warmup, start_at + warmup + seconds
    try:
        ready.wait(STALL_SECONDS)
    except Exception as error:
        raise BenchError("the client processes did not start") from error
    total = Measured()
    for _ in processes:
        offset, latencies, errors, first_error, answered = results.get(
            timeout=warmup + seconds + 60
        )
        if errors < 0:
            raise BenchError(f"client process {offset} failed: {first_error}")
        chunk = array("d")
        chunk.frombytes(latencies)
        total.latencies.extend(chunk)
        total.errors += errors
        total.answered += answered
        total.first_error = total.first_error or first_error
    for process in processes:
        process.join(STALL_SECONDS)
    if total.errors:
        raise BenchError(f"{total.errors} requests failed; the first: {total.first_error!r}")
    return total
