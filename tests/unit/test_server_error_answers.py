"""The answers kms's worker writes itself (kms.server.errors): the status line a client reads
names its status with the standard reason phrase (RFC 9110), never a made-up one."""

from __future__ import annotations

import json
import logging
import socket
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from kms.server.errors import json_error
from kms.server.worker import KMSWorker

PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


@pytest.mark.parametrize(("status", "phrase"), PHRASES.items())
def test_each_answer_names_its_status(status: int, phrase: str) -> None:
    answer = json_error(status, "refused")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == f"HTTP/1.1 {status} {phrase}".encode()
    assert b"Connection: close" in head.split(b"\r\n")
    assert json.loads(body) == {"error": "refused"}


def test_a_fault_of_the_worker_after_the_head_is_read_is_a_500_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client gets the JSON 500; the operator gets the request and the traceback."""
    worker = object.__new__(KMSWorker)
    worker.log = logging.getLogger("kms.tests.serving")
    worker.cfg = Config()
    request = SimpleNamespace(method="GET", uri="/v1/kms/keys\nforged")
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        try:
            raise RuntimeError("a bug")
        except RuntimeError as exc:
            worker.handle_error(request, server_end, ("127.0.0.1", 40000), exc)
        answer = client_end.recv(4096)
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "error handling request GET /v1/kms/keys\\nforged"
    assert record.exc_info is not None and "a bug" in caplog.text
