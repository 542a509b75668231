"""How a response leaves the worker: one write for the head and body, never a blocked thread.

A request thread writes its response to the connection's ``ConnectionWriter``, not to the
socket. The writer sends what the socket takes at once (the socket is non-blocking) and keeps
the rest; the event loop sends that rest when the client reads (the connection's ``WRITE``
state), under ``server.write_timeout``. So a client that asks and never reads holds some memory
(at most the one response it has not read: the next pipelined request is read only once the
previous answer is out), never a thread.
"""

from __future__ import annotations

import selectors
import ssl
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.http.wsgi import Response


class ConnectionWriter:
    """The socket as a request thread sees it: ``sendall`` queues what cannot go out at once.

    Order is kept: once anything is queued, later writes queue behind it. The thread and the
    event loop never use it at the same time (the event loop flushes only after the thread is
    done). A TLS write that could not finish is retried with the same bytes at the start of the
    buffer, as OpenSSL requires (Python's sockets accept a moved buffer).

    Everything else (``getpeercert`` for the caller's identity, ``fileno``...) is the socket's:
    gunicorn gives this object to the application as ``environ["gunicorn.socket"]``.
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.pending = bytearray()
        self.sent = 0
        # The readiness the event loop waits for before the next flush.
        self.wants = selectors.EVENT_WRITE

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self.pending:
            self.pending += data
            return
        self.pending += data
        self.flush()

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self.sendall(data)
        return len(data)

    def flush(self) -> bool:
        """Send what is queued without waiting; True once nothing is left.

        Raises the socket's error (``OSError``, ``ssl.SSLError``) if the client went away.
        """
        while self.pending:
            try:
                count = self.sock.send(memoryview(self.pending))
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self.wants = selectors.EVENT_WRITE
                return False
            except ssl.SSLWantReadError:
                self.wants = selectors.EVENT_READ
                return False
            del self.pending[:count]
            self.sent += count
        return True


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

    def sendfile(self, respiter: Any) -> bool:
        # os.sendfile would write to the socket from the thread, waiting on the client: the
        # file goes through ``write`` (and the connection's writer) instead.
        return False
