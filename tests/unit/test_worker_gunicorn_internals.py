"""What kms.server.worker takes from gunicorn beyond its settings: none of it is public API.

KMSWorker derives from gthread's ThreadWorker (with kms.server.serving's and kms.server.balance's
parts mixed in) and drives gunicorn's parser, body readers and
response itself. It overrides methods gunicorn calls, calls functions and constructors by
position, and reads and writes private fields (``Request._expected_100_continue``,
``Response._omits_body``, ``IterUnreader.buf``, the parser's ``unreader``, ``mesg`` and
``req_count``). pyproject.toml pins the gunicorn releases the worker was checked against; when
the pin moves, this file names what changed, where the HTTP tests would only see connections
hang or answers go wrong.
"""

from __future__ import annotations

import inspect
import selectors
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import pytest
from gunicorn import glogging, sock, util
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import IterUnreader
from gunicorn.workers import base, gthread

from kms.server.worker import KMSWorker, OneWriteResponse

PEER = ("127.0.0.1", 50000)
SERVER = ("127.0.0.1", 8080)
HEAD = (
    b"POST /v1/kms/encrypt HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n"
)
PIPELINED = b"GET /health HTTP/1.1\r\nHost: kms\r\n\r\n"


class FakeSocket:
    """What gunicorn's response and environ need of a socket: sendall only."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def sendall(self, data: bytes) -> None:
        self.sent += data


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# KMSWorker and OneWriteResponse override these, and gunicorn's own code calls some of them
# (run from init_process, write and send_headers from close and write_file): same parameters.
OVERRIDDEN = [
    (base.Worker, "__init__", ["self", "age", "ppid", "sockets", "app", "timeout", "cfg", "log"]),
    (base.Worker, "handle_error", ["self", "req", "client", "addr", "exc"]),
    (gthread.ThreadWorker, "init_process", ["self"]),
    (gthread.ThreadWorker, "run", ["self"]),
    (gthread.ThreadWorker, "accept", ["self", "listener"]),
    (gthread.ThreadWorker, "wait_for_and_dispatch_events", ["self", "timeout"]),
    (gthread.ThreadWorker, "handle", ["self", "conn"]),
    (gthread.ThreadWorker, "handle_request", ["self", "req", "conn"]),
    (gthread.ThreadWorker, "finish_request", ["self", "conn", "fs"]),
    (wsgi.Response, "write", ["self", "arg"]),
    (wsgi.Response, "send_headers", ["self"]),
    (wsgi.Response, "sendfile", ["self", "respiter"]),
]

# Called by the worker with these leading positional arguments.
CALLED = [
    (sock.ssl_context, ["conf"]),
    (util.write, ["sock", "data"]),
    (util.to_bytestring, ["value", "encoding"]),
    (util.close_graceful, ["sock"]),
    (wsgi.create, ["req", "sock", "client", "server", "cfg", "response_class"]),
    (wsgi.default_environ, ["req", "sock", "cfg"]),
    (wsgi.Response, ["req", "sock", "cfg"]),
    (Request, ["cfg", "unreader", "peer_addr", "req_number"]),
    (RequestParser, ["cfg", "source", "source_addr"]),
    (IterUnreader, ["iterable"]),
    (RequestParser.finish_body, ["self"]),
    (wsgi.Response.default_headers, ["self"]),
    (glogging.Logger.access, ["self", "resp", "req", "environ", "request_time"]),
]


@pytest.mark.parametrize(
    ("owner", "name", "expected"), OVERRIDDEN, ids=[name for _, name, _ in OVERRIDDEN]
)
def test_what_the_worker_overrides_keeps_its_parameters(
    owner: type, name: str, expected: list[str]
) -> None:
    assert name in vars(owner), f"{owner.__qualname__}.{name} is gone"
    assert parameters(getattr(owner, name)) == expected
    ours = KMSWorker if issubclass(KMSWorker, owner) else OneWriteResponse
    assert issubclass(ours, owner)
    # Overridden by one of kms's classes (the worker is made of several: kms.server.serving...).
    assert any(name in vars(cls) for cls in ours.__mro__ if cls.__module__.startswith("kms."))


@pytest.mark.parametrize(
    ("function", "expected"), CALLED, ids=[function.__qualname__ for function, _ in CALLED]
)
def test_what_the_worker_calls_takes_the_same_leading_arguments(
    function: Callable[..., Any], expected: list[str]
) -> None:
    names = parameters(function)
    assert names[: len(expected)] == expected


def test_base_init_process_still_runs_the_worker_and_loads_the_app() -> None:
    # KMSWorker.init_process builds its TLS context and hands over to gunicorn's, which must
    # still load the WSGI app (self.wsgi, read by handle_request) and then call run().
    source = inspect.getsource(base.Worker.init_process)
    assert "self.load_wsgi()" in source
    assert source.rstrip().endswith("self.run()")
    assert "self.wsgi = " in inspect.getsource(base.Worker.load_wsgi)


@pytest.fixture
def thread_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[gthread.ThreadWorker]:
    # base.Worker.init_process installs signal handlers, loads the app and runs the loop: only
    # gthread's own part (thread pool, poller, method queue) runs here.
    monkeypatch.setattr(base.Worker, "init_process", lambda self: None)
    worker = gthread.ThreadWorker(0, 1, [], None, 30, Config(), None)
    worker.init_process()
    yield worker
    worker.tpool.shutdown(wait=False)
    worker.poller.close()
    worker.method_queue.close()
    worker.tmp.close()


def test_a_thread_worker_has_the_state_the_worker_reads_and_writes(
    thread_worker: gthread.ThreadWorker,
) -> None:
    assert isinstance(thread_worker.tpool, futures.ThreadPoolExecutor)
    assert isinstance(thread_worker.poller, selectors.BaseSelector)
    queue = thread_worker.method_queue
    assert isinstance(queue.fileno(), int)
    called: list[int] = []
    queue.defer(called.append, 7)
    queue.run_callbacks(None)
    assert called == [7]
    assert thread_worker.nr_conns == 0
    assert thread_worker.nr == 0
    assert isinstance(thread_worker.max_requests, int)
    assert len(thread_worker.keepalived_conns) == 0
    assert isinstance(thread_worker.max_keepalived, int)
    assert thread_worker.alive is True
    assert thread_worker.sockets == []
    assert callable(thread_worker.notify)
    assert callable(thread_worker.is_parent_alive)
    for setting in (
        "is_ssl",
        "certfile",
        "keyfile",
        "ca_certs",
        "limit_request_line",
        "limit_request_fields",
        "limit_request_field_size",
        "graceful_timeout",
        "keepalive",
        "suppress_ragged_eofs",
        "pre_request",
        "post_request",
    ):
        getattr(thread_worker.cfg, setting)  # AttributeError if renamed


def test_a_request_parsed_from_bytes_exposes_what_examine_reads() -> None:
    unreader = IterUnreader([HEAD + b"{}" + PIPELINED])
    request = Request(Config(), unreader, PEER, 1)
    assert request._expected_100_continue is True
    assert request.req_number == 1
    assert (request.method, request.uri) == ("POST", "/v1/kms/encrypt")
    assert isinstance(request.body.reader, LengthReader)
    assert request.body.reader.length == 2
    # What follows the head: the body and whatever was pipelined after it.
    assert unreader.buf.getvalue() == b"{}" + PIPELINED
    request.force_close()
    assert request.should_close()


def test_a_chunked_body_is_read_through_its_reader() -> None:
    head = b"POST / HTTP/1.1\r\nHost: kms\r\nTransfer-Encoding: chunked\r\n\r\n"
    request = Request(Config(), IterUnreader([head + b"2\r\n{}\r\n0\r\n\r\n"]), PEER, 1)
    assert isinstance(request.body.reader, ChunkedReader)
    assert request.body.read(65536) == b"{}"
    truncated = Request(Config(), IterUnreader([head + b"2\r\n{"]), PEER, 1)
    with pytest.raises(http_errors.NoMoreData):
        truncated.body.read(65536)


def test_an_incomplete_head_raises_what_examine_catches() -> None:
    with pytest.raises((http_errors.NoMoreData, StopIteration)):
        Request(Config(), IterUnreader([HEAD[:20]]), PEER, 1)


def test_the_parser_takes_a_request_parsed_beforehand() -> None:
    # KMSWorker.handle hands the parser the request and unreader that examine built, through
    # the parser's private fields, then lets it finish the body and parse the next request.
    cfg = Config()
    unreader = IterUnreader([HEAD + b"{}" + PIPELINED])
    request = Request(cfg, unreader, PEER, 1)
    parser = RequestParser(cfg, iter(()), PEER)
    parser.unreader, parser.mesg, parser.req_count = unreader, request, request.req_number
    assert request.body.read(65536) == b"{}"
    parser.finish_body()
    following = next(parser)
    assert (following.method, following.uri, following.req_number) == ("GET", "/health", 2)


def test_the_parser_reads_bytes_unread_into_it() -> None:
    parser = RequestParser(Config(), iter(()), PEER)
    parser.unreader.unread(PIPELINED)
    request = next(parser)
    assert (request.method, request.uri) == ("GET", "/health")


def started_response(response_class: type[wsgi.Response], socket: FakeSocket) -> wsgi.Response:
    request = Request(Config(), IterUnreader([HEAD + b"{}"]), PEER, 1)
    # The event loop answered "Expect: 100-continue" already; clearing the flag keeps gunicorn
    # from sending a second one (FakeSocket has no send: it would raise).
    request._expected_100_continue = False
    response, environ = wsgi.create(request, socket, PEER, SERVER, Config(), response_class)
    assert environ["gunicorn.socket"] is socket
    assert not socket.sent
    response.start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")]
    )
    return response


def test_a_response_exposes_what_one_write_response_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(util, "http_date", lambda *_: "Sat, 28 Nov 2026 12:00:00 GMT")
    ours = started_response(OneWriteResponse, FakeSocket())
    assert isinstance(ours, OneWriteResponse)
    assert ours.headers_sent is False
    assert ours.chunked is False
    assert ours._omits_body is False
    assert ours.response_length == 2
    assert ours.sent == 0
    # head_bytes copies send_headers: both must put the same head on the wire.
    theirs_socket = FakeSocket()
    theirs = started_response(wsgi.Response, theirs_socket)
    theirs.send_headers()
    assert ours.head_bytes() == bytes(theirs_socket.sent)
    assert ours.head_bytes().startswith(b"HTTP/1.1 200 OK\r\n")


def test_one_write_response_sends_head_and_body_in_one_write() -> None:
    socket = FakeSocket()
    response = started_response(OneWriteResponse, socket)
    writes: list[bytes] = []
    socket.sendall = writes.append  # type: ignore[method-assign]
    response.write(b"{}")
    assert len(writes) == 1
    assert writes[0].endswith(b"\r\n\r\n{}")
    assert (response.headers_sent, response.sent) == (True, 2)


def test_gunicorn_writes_a_response_through_sendall_only() -> None:
    # The connection's writer (kms.server.writing) queues what the socket cannot take at once;
    # it sees every byte only if gunicorn's writes all go through sendall.
    socket = FakeSocket()
    util.write(socket, b"head")
    util.write(socket, b"body", chunked=True)
    util.write_chunk(socket, b"")
    assert bytes(socket.sent) == b"head4\r\nbody\r\n0\r\n\r\n"


def test_the_master_runs_murder_workers_on_each_pass_and_hooks_before_forking() -> None:
    # kms.gunicorn_conf follows the TLS files from gunicorn's master by running its check after
    # Arbiter.murder_workers, once a pass of the master's loop; it refreshes the context that
    # workers inherit in pre_fork and in on_reload, which gunicorn runs before it starts the
    # workers of a reload.
    run = inspect.getsource(Arbiter.run)
    assert "self.murder_workers()" in run[run.index("while True:") :]
    reload = inspect.getsource(Arbiter.reload)
    assert reload.index("self.cfg.on_reload(self)") < reload.index("self.spawn_worker()")
    assert "self.cfg.pre_fork(self, worker)" in inspect.getsource(Arbiter.spawn_worker)
