"""Whether a connection's buffer holds a whole request: the event loop's side of reading.

The event loop reads whatever a connection sends into its buffer and asks ``examine`` after each
read. gunicorn's own parser checks the bytes received so far, so a head it would refuse goes to
a thread at once, to be answered; a whole request (head and body, Content-Length or chunked, up
to ``server.max_body_bytes``) goes to a thread parsed, with every byte in memory.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from enum import Enum
from typing import Any

from gunicorn.http import errors as http_errors
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader

from kms.errors import PayloadTooLarge
from kms.server.connection import Connection, State
from kms.server.limits import ServerLimits

#: Largest single read from a socket in the event loop.
READ_SIZE = 64 * 1024
#: How much a closing connection drains, and the most of an over-limit body the event loop
#: reads and drops to keep the connection.
LINGER_MAX_BYTES = 16 * 1024 * 1024
#: Chunked framing may add this much to a body (chunk size lines, trailers) beyond its payload,
#: and a chunked body may take up to CHUNKED_WIRE_FACTOR times its limit on the wire (small
#: chunks); more is refused with 413, which bounds the memory one connection can take.
CHUNKED_FRAMING_ALLOWANCE = 64 * 1024
CHUNKED_WIRE_FACTOR = 2

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Verdict(Enum):
    NEED_MORE = "need more"
    READY = "ready"


def max_head_bytes(cfg: Any) -> int:
    """The largest request head gunicorn's limits let through (line, fields, separators)."""
    line = cfg.limit_request_line or 8190
    fields = cfg.limit_request_fields or 100
    field_size = cfg.limit_request_field_size or 8190
    return line + 2 + fields * (field_size + 2) + 4


def buffer_limit(cfg: Any, limits: ServerLimits) -> int:
    """The most a connection's buffer holds: a head and the longest body on the wire."""
    return (
        max_head_bytes(cfg)
        + CHUNKED_WIRE_FACTOR * limits.max_body_bytes
        + CHUNKED_FRAMING_ALLOWANCE
    )


def examine(conn: Connection, cfg: Any, limits: ServerLimits) -> Verdict:
    """Whether ``conn.buffer`` holds a whole request (or one a thread must refuse)."""
    conn.body_have, conn.body_expected = 0, None
    conn.body_complete, conn.body_error = True, None
    conn.discard_to = None
    conn.whole_at = None
    conn.parsed = None
    data = bytes(conn.buffer)
    unreader = IterUnreader([data])
    try:
        request = Request(cfg, unreader, conn.client, conn.requests + 1)
    except (http_errors.NoMoreData, StopIteration):
        # A head larger than any the parser accepts would have raised already; this is a
        # backstop, and the thread's parser then refuses it.
        return Verdict.READY if len(data) > max_head_bytes(cfg) else Verdict.NEED_MORE
    except Exception:
        # The thread parses the same bytes, gets the same error and answers it.
        return Verdict.READY
    rest = unreader.buf.getvalue()
    reader = request.body.reader if request.body is not None else None
    max_body = limits.max_body_bytes
    if isinstance(reader, LengthReader):
        conn.body_expected = reader.length
        conn.body_have = min(len(rest), reader.length)
        if reader.length > max_body:
            # The application answers 413 from the Content-Length alone; the event loop
            # drops the body afterwards if that is cheap enough to keep the connection.
            conn.body_complete = False
            if reader.length - max_body <= LINGER_MAX_BYTES:
                conn.discard_to = len(data) - len(rest) + reader.length
            return Verdict.READY
        if len(rest) >= reader.length:
            conn.parsed = (unreader, request)
            return Verdict.READY
        conn.whole_at = len(data) - len(rest) + reader.length
    elif isinstance(reader, ChunkedReader):
        conn.body_have = len(rest)
        verdict = examine_chunked(conn, request, rest, limits)
        if verdict is not None:
            return verdict
    else:
        conn.parsed = (unreader, request)
        return Verdict.READY
    await_body(conn, request)
    return Verdict.NEED_MORE


def examine_chunked(
    conn: Connection, request: Request, rest: bytes, limits: ServerLimits
) -> Verdict | None:
    max_body = limits.max_body_bytes
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
        return Verdict.READY
    if decoded > max_body or over_size:
        conn.body_error = PayloadTooLarge()
        conn.body_complete = False
    return Verdict.READY


def await_body(conn: Connection, request: Request) -> None:
    note_body_progress(conn)
    if request._expected_100_continue and not conn.continue_sent:
        # Clients that wait for it send their body only then; the request is short.
        conn.continue_sent = True
        with contextlib.suppress(ssl.SSLError, OSError):
            conn.sock.send(_CONTINUE)


def note_body_progress(conn: Connection) -> None:
    now = time.monotonic()
    if conn.state is not State.BODY:
        conn.enter(State.BODY)
        conn.body_last_progress = now
        conn.progress_mark = conn.body_have
    elif conn.body_have > conn.progress_mark:
        conn.body_last_progress = now
        conn.progress_mark = conn.body_have
