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
    deployment: Deployment, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLSocket:
    """A connection with the deployment's client certificate, or with ``cert`` and ``key``."""
    context = ssl.create_default_context(cafile=str(deployment.ca_cert))
    context.load_cert_chain(str(cert or deployment.client_cert), str(key or deployment.client_key))
    raw = socket.create_connection(("127.0.0.1", deployment.port), timeout=PROCESS_TIMEOUT_SECONDS)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


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


def read_response(stream: Any) -> RawResponse:
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
