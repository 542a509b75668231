"""The access line kms writes (``RequestAtoms``: only the atoms the format names) equals the one
gunicorn's own way writes (every atom, header and environ entry escaped by ``EscapingAtoms``),
for every atom gunicorn knows, for headers and environ entries, and for hostile values.

Real gunicorn parts: its config, its request parser over raw bytes, its ``wsgi.create`` and
its response; the two loggers write to files that are compared line by line.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from gunicorn import glogging
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser

from kms.server.logs import KMSLogger
from kms.server.writing import OneWriteResponse

#: kms's own format (kms.gunicorn_conf), gunicorn's default, and one naming every atom, request
#: and response headers (any case), environ entries, a missing one of each and an unknown atom.
FORMATS = (
    '%(h)s caller="%({kms.caller}e)s" identity="%({kms.identity}e)s" '
    'request_id=%({kms.request_id}e)s "%(r)s" %(s)s %(b)s %(M)sms',
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
    " ".join(f"%({atom})s" for atom in "hlutrsmUqHbBfaTDMLp")
    + ' "%({X-Hostile}i)s" "%({user-agent}i)s" "%({X-Request-Id}o)s" "%({content-type}o)s"'
    ' "%({kms.caller}e)s" "%({HTTP_X_HOSTILE}e)s" "%({kms.none}e)s" "%({absent}i)s"'
    ' "%({absent}o)s" "%({absent}e)s" "%({weird}x)s" "%(nothing)s"',
)
HOSTILE = 'x"\\ncaller="admin\x00\x1b[31m\u2603\U0001f600'


class _Socket:
    def getpeercert(self, binary_form: bool = False) -> Any:
        return None

    def sendall(self, data: bytes) -> None:
        pass


class _GunicornAccess(KMSLogger):
    """KMSLogger with gunicorn's own ``access``: every atom built, wrapped by EscapingAtoms."""

    access = glogging.Logger.access

    def now(self) -> str:
        return "[07/Dec/2026:22:00:00 +0000]"


class _KMSAccess(KMSLogger):
    def now(self) -> str:
        return "[07/Dec/2026:22:00:00 +0000]"


def _exchange(cfg: Config) -> tuple[Any, Request, dict[str, Any]]:
    head = (
        "POST /v1/kms/encrypt?x=%22%0a HTTP/1.1\r\n"
        "Host: kms\r\n"
        "Authorization: Basic " + "YWxpY2U6c2VjcmV0" + "\r\n"  # alice:secret
        'User-Agent: agent"\\\r\n'
        'X-Hostile: x"\\caller="admin \xe9\xff\r\n'
        "Referer: https://example.test/\r\n"
        "Content-Length: 2\r\n\r\n{}"
    )
    parser = RequestParser(cfg, iter([head.encode("latin-1")]), ("127.0.0.1", 4242))
    request = next(parser)
    response, environ = wsgi.create(
        request, _Socket(), ("127.0.0.1", 4242), ("127.0.0.1", 8443), cfg, OneWriteResponse
    )
    environ["kms.caller"] = HOSTILE
    environ["kms.identity"] = "cn:orchestrator"
    environ["kms.request_id"] = "0123456789abcdef0123456789abcdef"
    environ["kms.none"] = None
    response.start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("X-Request-Id", 'a"b\\c')],
    )
    response.sent = 12
    return response, request, environ


@pytest.mark.parametrize("access_format", FORMATS)
def test_the_line_is_gunicorns_line(tmp_path: Path, access_format: str) -> None:
    lines = {}
    for name, logger_class in (("gunicorn", _GunicornAccess), ("kms", _KMSAccess)):
        cfg = Config()
        cfg.set("access_log_format", access_format)
        cfg.set("accesslog", str(tmp_path / f"{name}.log"))
        cfg.set("errorlog", str(tmp_path / f"{name}-error.log"))
        response, request, environ = _exchange(cfg)
        logger = logger_class(cfg)
        logger.access(response, request, environ, timedelta(seconds=1, microseconds=2345))
        logger.access(response, request, environ, timedelta(0))
        for handler in logger.access_log.handlers:
            handler.close()
        lines[name] = (tmp_path / f"{name}.log").read_text(encoding="ascii").splitlines()
        assert (tmp_path / f"{name}-error.log").read_text() == ""
    assert len(lines["kms"]) == 2
    assert lines["kms"] == lines["gunicorn"]
    for line in lines["kms"]:
        assert line.isprintable() and "\n" not in line
        assert 'caller="admin' not in line.replace('\\"', "")
