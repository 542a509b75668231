"""``read_json_object``: the body limit whatever the transfer encoding, and lone surrogates.

In process, on Werkzeug requests built directly (``Request.from_values``), so that a body can
come with a Content-Length or without one (as a chunked body reaches the view).
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask import Request

from kms.api.payload import read_json_object
from kms.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

LIMIT = 64


def body_of(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    head, tail = b'{"a":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def request_for(body: bytes, *, with_length: bool, mimetype: str = "application/json") -> Request:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": mimetype,
        "wsgi.input": io.BytesIO(body),
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "443",
        "wsgi.url_scheme": "https",
    }
    if with_length:
        environ["CONTENT_LENGTH"] = str(len(body))
    else:
        # What gunicorn hands over for a chunked body: no length, the end marked by the stream.
        environ["wsgi.input_terminated"] = True
    return Request(environ)


@pytest.mark.parametrize("with_length", [True, False])
def test_a_body_of_exactly_the_limit_is_read_whole(with_length: bool) -> None:
    assert read_json_object(request_for(body_of(LIMIT), with_length=with_length), LIMIT) == {
        "a": "x" * (LIMIT - 8)
    }


@pytest.mark.parametrize("with_length", [True, False])
def test_a_body_one_byte_over_the_limit_is_413(with_length: bool) -> None:
    with pytest.raises(PayloadTooLarge):
        read_json_object(request_for(body_of(LIMIT + 1), with_length=with_length), LIMIT)


class _Unreadable(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise AssertionError("the body was read although its Content-Length is over the limit")


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    request = request_for(b"", with_length=True)
    request.environ["CONTENT_LENGTH"] = str(LIMIT + 1)
    request.environ["wsgi.input"] = _Unreadable()
    with pytest.raises(PayloadTooLarge):
        read_json_object(request, LIMIT)


@pytest.mark.parametrize("escape", [rb"\ud800", rb"\udfff", rb"x\ud83dy"])
def test_a_lone_surrogate_escape_is_refused(escape: bytes) -> None:
    body = b'{"a":"' + escape + b'"}'
    with pytest.raises(InvalidRequest, match="invalid unicode escape"):
        read_json_object(request_for(body, with_length=True), 1024)


def test_a_surrogate_pair_and_an_escaped_backslash_are_fine() -> None:
    body = rb'{"a":"\ud83d\ude00","b":"\\U0001"}'
    assert read_json_object(request_for(body, with_length=True), 1024) == {
        "a": "\U0001f600",
        "b": "\\U0001",
    }


def test_only_json_is_read() -> None:
    with pytest.raises(UnsupportedMediaType):
        read_json_object(request_for(b"{}", with_length=True, mimetype="text/plain"), LIMIT)
