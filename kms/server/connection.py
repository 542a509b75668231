"""One client connection of the kms worker, and the states the event loop moves it through.

The states, their deadlines and the order of eviction are specified in ``kms.server.worker``'s
docstring; this module holds what the worker knows about each connection.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING, Any

from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import IterUnreader

if TYPE_CHECKING:
    import socket

    from kms.server.writing import ConnectionWriter


class State(Enum):
    HANDSHAKE = "handshake"
    HEAD = "head"
    BODY = "body"
    IDLE = "idle"
    BUSY = "busy"
    WRITE = "write"
    LINGER = "linger"
    DISCARD = "discard"


class AfterWrite(Enum):
    """What becomes of a connection once its response has gone out."""

    KEEP = "keep"  # read its next request
    DISCARD = "discard"  # drop the rest of an over-limit body, then read its next request
    CLOSE = "close"  # linger, then close


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
        # Who holds the connection, once its handshake is done: the names of its certificate
        # (kms.server.admission counts connections per identity). None: not known (yet).
        self.identity: str | None = None
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
        # The response on its way out (kms.server.writing): what the thread could not send
        # without waiting, which the event loop sends (WRITE), and what follows once it is out.
        self.writer: ConnectionWriter | None = None
        self.after_write = AfterWrite.CLOSE
        self.write_progress = 0.0

    @property
    def ip(self) -> str:
        if isinstance(self.client, tuple) and self.client:
            return str(self.client[0])
        return str(self.client)

    @property
    def request_in_progress(self) -> bool:
        """Some of a request has arrived, or its answer is being made or sent."""
        if self.state in (State.BODY, State.BUSY, State.WRITE, State.DISCARD):
            return True
        return self.state is State.HEAD and bool(self.buffer)

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
