"""Raw HTTP/1.1 over mutual TLS, for requests no HTTP client library would send."""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.harness import PROCESS_TIMEOUT_SECONDS, Deployment


def tls_connection(
    deployment: Deployment,
    cert: Path | None = None,
    key: Path | None = None,
    receive_buffer: int | None = None,
) -> ssl.SSLSocket:
    """A TLS connection with the deployment's client certificate (or ``cert`` and ``key``);
    ``receive_buffer`` sets a small SO_RCVBUF first, for a client that reads little."""
    context = ssl.create_default_context(cafile=str(deployment.ca_cert))
    context.load_cert_chain(str(cert or deployment.client_cert), str(key or deployment.client_key))
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(PROCESS_TIMEOUT_SECONDS)
    if receive_buffer is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    try:
        raw.connect(("127.0.0.1", deployment.port))
        return context.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def read_response(tls: ssl.SSLSocket) -> bytes:
    """One whole response (by its Content-Length) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(parse_response(head + b"\r\n\r\n").headers["content-length"])
    while len(body) < length:
        chunk = tls.recv(65536)
        assert chunk, head
        body += chunk
    return head + b"\r\n\r\n" + body


def read_to_end(tls: ssl.SSLSocket) -> bytes:
    received = b""
    while chunk := tls.recv(65536):
        received += chunk
    return received


def read_head(tls: ssl.SSLSocket) -> bytes:
    """One response head (an interim "100 Continue", say), byte by byte: nothing after it is
    read."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = tls.recv(1)
        assert chunk, head
        head += chunk
    return head


def raw_request(deployment: Deployment, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; return everything until the server closes."""
    with tls_connection(deployment) as tls:
        tls.sendall(request)
        return read_to_end(tls)


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(data: bytes) -> RawResponse:
    """The first response in ``data``: status, headers (lower-case names) and body."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return RawResponse(int(status_line.split()[1]), headers, rest[:length])


class ResponseStream:
    """The responses of one kept-alive connection, one at a time, pipelined ones included."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.tls.recv(65536)
        assert chunk, "the server closed the connection"
        self.buffer += chunk

    def next(self) -> RawResponse:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = int(parse_response(head + b"\r\n\r\n").headers["content-length"])
        while len(rest) < length:
            self._fill()
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.buffer = rest[length:]
        return parse_response(head + b"\r\n\r\n" + rest[:length])


def read_response_from(stream: Any) -> RawResponse:
    """One response from ``stream`` (a socket's ``makefile("rb")``), by its Content-Length:
    nothing after it is read, so the connection can carry the next request."""
    status_line = stream.readline()
    assert status_line, "the server closed the connection"
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return RawResponse(int(status_line.split()[1]), headers, body)
