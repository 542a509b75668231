"""What a request thread of the kms worker does: serve the one request the event loop handed it.

The request is already in memory (parsed, or in ``conn.buffer``): the thread never reads from
the socket. Its answer goes to the connection's ``ConnectionWriter`` (kms.server.writing), which
never waits on the client, so a thread is never held by a client, reading or writing.
"""

from __future__ import annotations

import errno
import ssl
from datetime import datetime, timedelta
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import Response, default_environ

from kms.server.connection import Connection
from kms.server.errors import REASONS, error_answer, json_body, json_error
from kms.server.identity import ENVIRON_KEY as CALLER_ENVIRON_KEY
from kms.server.identity import caller_from_peer_certificate
from kms.server.logs import escape_log_value
from kms.server.writing import ConnectionWriter, OneWriteResponse

#: What a thread returns when the rest of an over-limit body is to be dropped by the event loop.
DISCARD_REST = object()


class ServesRequests:
    """The thread side of ``KMSWorker`` (gthread's ``handle`` and ``handle_request``, gunicorn's
    ``handle_error``), mixed in before gthread's ``ThreadWorker``."""

    # gunicorn's, which has no type information.
    alive: bool
    cfg: Any
    log: Any
    nr: int
    max_requests: int
    wsgi: Any
    keepalived_conns: Any
    max_keepalived: int

    def handle(self, conn: Connection) -> bool | object:
        """Serve the one request in ``conn.buffer``; True to keep the connection.

        ``DISCARD_REST`` keeps it too, once the event loop has dropped the rest of the body.
        """
        request = None
        writer = self.writer_of(conn)
        try:
            if conn.parser is None:
                # Its source is empty: the parser reads only what the event loop received.
                conn.parser = RequestParser(self.cfg, iter(()), conn.client)
            if conn.parsed is not None:
                # Parsed whole by the event loop (examine): the parser takes that request and
                # the unreader that holds its body and whatever was pipelined after it.
                conn.parser.unreader, request = conn.parsed
                conn.parser.mesg = request
                conn.parser.req_count = request.req_number
                conn.parsed = None
            else:
                conn.parser.unreader.unread(bytes(conn.buffer))
                request = next(conn.parser)
            conn.buffer = bytearray()
            # The event loop answered "Expect: 100-continue" already, if it was needed.
            request._expected_100_continue = False
            if conn.body_error is not None:
                self.handle_error(request, writer, conn.client, conn.body_error)
                return False
            if not conn.body_complete and conn.discard_to is None:
                # The rest of the body is still on its way and too long to wait for: the
                # event loop drops it after the answer (LINGER), which says "Connection: close".
                request.force_close()
            keepalive = self.handle_request(request, conn)
            if not keepalive:
                return False
            if not conn.body_complete:
                return DISCARD_REST
            return bool(conn.parser.finish_body())
        except http_errors.NoMoreData as exc:
            self.log.debug("client went away: %s", exc)
        except StopIteration:
            pass
        except ssl.SSLError as exc:
            self.log.debug("TLS error from ip=%s: %s", conn.ip, exc)
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.debug("client ip=%s went away", conn.ip)
            else:
                self.log.exception("socket error serving ip=%s", conn.ip)
        except Exception as exc:
            self.handle_error(request, writer, conn.client, exc)
        return False

    @staticmethod
    def writer_of(conn: Connection) -> ConnectionWriter:
        if conn.writer is None:
            conn.writer = ConnectionWriter(conn.sock)
        return conn.writer

    def handle_request(self, req: Request, conn: Connection) -> bool:
        """gthread's ``handle_request``, with the response written in one piece
        (``OneWriteResponse``); True to keep the connection."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(
                req, self.writer_of(conn), conn.client, conn.server, self.cfg, OneWriteResponse
            )
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            full = len(self.keepalived_conns) >= self.max_keepalived
            if not self.alive or not self.cfg.keepalive or full:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                request_time = datetime.now() - request_start
                self.log.access(resp, req, environ, request_time)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                # Timeout abort is SystemExit. If the response was begun, writing a 500 on the
                # same socket would corrupt it.
                self.log.exception("Error handling request")
                gunicorn_util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
        return True

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's error answers as kms JSON: ``{"error": "..."}``, a 4xx for the client's."""
        status, message = error_answer(exc)
        addr = addr or ("", -1)
        ip = addr[0] if isinstance(addr, tuple) else addr
        if status >= 500:
            if getattr(req, "uri", None) is not None:
                self.log.exception(
                    "error handling request %s %s", req.method, escape_log_value(req.uri)
                )
            else:
                self.log.exception("error handling request (no URI read)")
        else:
            detail = escape_log_value(str(exc))
            self.log.warning('invalid request from ip=%s: %s: "%s"', ip, message, detail)
            if req is None and hasattr(exc, "req"):
                req = exc.req
        if req is not None and getattr(req, "method", None) is not None:
            self.access_log_error(req, client, addr, status, message)
        try:
            client.sendall(json_error(status, message))
        except Exception:
            self.log.debug("could not send the error answer")

    def access_log_error(self, req: Any, client: Any, addr: Any, status: int, message: str) -> None:
        try:
            environ = default_environ(req, client, self.cfg)
            certificate = client.getpeercert() if hasattr(client, "getpeercert") else None
            if certificate:
                environ[CALLER_ENVIRON_KEY] = caller_from_peer_certificate(certificate)
            environ["REMOTE_ADDR"] = addr[0]
            environ["REMOTE_PORT"] = str(addr[1])
            resp = Response(req, client, self.cfg)
            resp.status = f"{status} {REASONS.get(status, 'Error')}"
            resp.sent = len(json_body(message))
            self.log.access(resp, req, environ, timedelta(0))
        except Exception:
            self.log.debug("could not write the access log line of a refused request")
