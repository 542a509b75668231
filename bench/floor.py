"""The floors: the least a request costs on kms's serving stack, to compare operations with.

Two WSGI applications served by ``bench/floor_conf.py`` (kms's own worker, TLS settings,
certificates, workers and threads, no access log), each answering every request with a small
JSON document after reading the whole body:

- ``bare_wsgi``: a plain WSGI callable; what is left is gunicorn's parsing and kms's worker.
- ``flask_app``: a Flask app with one ``jsonify`` route; what Flask's request handling adds.

An operation's rate against them says what share of the stack's capacity kms's own layers
(hooks, access log, audit, schemas, the service, the cryptography) take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, jsonify, request

ANSWER = b'{"ok":true}\n'
#: The path the floors' Flask route answers on: ``encrypt_256``'s request is what they get.
ROUTE = "/v1/kms/encrypt"


def bare_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]
    )
    return [ANSWER]


flask_app = Flask("bench.floor")


@flask_app.post(ROUTE)
def answer() -> Response:
    request.get_data()
    return jsonify(ok=True)
