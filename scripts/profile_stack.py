#!/usr/bin/env python3
"""In-process cost of one request through each layer of the serving stack, no TLS and no socket.

Each request is what a thread of kms's worker does with a request the event loop has read
(``kms.server.serving``): gunicorn's parser over the raw bytes, ``wsgi.create``, the WSGI app,
the response written to a socket that drops it, and the access line (kms's format, to a file).
The apps, from the floor up: a bare WSGI callable that reads the body and returns a small JSON
(``bare``), a Flask app with one ``jsonify`` route (``hello``), and kms as production builds
it (policy file, audit log, metrics) over a fresh SQLite keystore in a temporary directory;
``-nolog`` variants have no access log. It prints the CPU time per request of this thread
(steadier than wall time on a shared machine), one line per scenario and round; with
``--profile NAME`` it runs that scenario under cProfile (thread CPU time) instead; with
``--instructions`` it runs each scenario in a process of its own under valgrind's callgrind and
prints the instructions executed per request, which another process's load does not change at
all (about 50 times slower: use a few hundred calls). In that mode a worker's cached key row is
not re-read on the clock (``kms.cache_staleness_ms`` at its maximum): slowed down 50 times, it
would be re-read every few requests instead of about once a second.

    .venv/bin/python scripts/profile_stack.py [--calls 2000] [--rounds 3] [--profile encrypt]
    .venv/bin/python scripts/profile_stack.py --instructions --calls 200 --only encrypt,healthz
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import ctypes
import gc
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask, Response, jsonify
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from kms.app import create_app
from kms.master import init_database, open_master_keyring
from kms.server.logs import KMSLogger
from kms.server.writing import OneWriteResponse
from kms.settings import MAX_CACHE_STALENESS_MS, Settings

#: kms.gunicorn_conf's (importing it would read the settings of this machine).
ACCESS_LOG_FORMAT = (
    '%(h)s caller="%({kms.caller}e)s" identity="%({kms.identity}e)s" '
    'request_id=%({kms.request_id}e)s "%(r)s" %(s)s %(b)s %(M)sms'
)
POLICY = 'clients:\n  "cn:orchestrator":\n    - operations: ["*"]\n      keys: ["*"]\n'
PEER = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 8443)


class _Connection:
    """A verified client's TLS socket that takes every byte at once and drops it."""

    def getpeercert(self, binary_form: bool = False) -> Any:
        if binary_form:
            return b"not a real DER certificate"
        return {
            "subject": ((("commonName", "orchestrator"),),),
            "subjectAltName": (("DNS", "orchestrator"),),
            "serialNumber": "1001",
        }

    def sendall(self, data: bytes) -> None:
        pass


def _config(directory: Path, access_log: bool) -> Config:
    cfg = Config()
    cfg.set("access_log_format", ACCESS_LOG_FORMAT)
    if access_log:
        cfg.set("accesslog", str(directory / "access.log"))
    cfg.set("errorlog", str(directory / "error.log"))
    return cfg


def served(app: Callable[..., Iterable[bytes]], cfg: Config, raw: bytes) -> Callable[[], None]:
    """One request's work on a thread of kms's worker (``ServesRequests.handle_request``)."""
    log = KMSLogger(cfg)
    connection = _Connection()

    def call() -> None:
        request = next(RequestParser(cfg, iter([raw]), PEER))
        started = datetime.now()
        response, environ = wsgi.create(request, connection, PEER, SERVER, cfg, OneWriteResponse)
        environ["wsgi.multithread"] = True
        answer = app(environ, response.start_response)
        for chunk in answer:
            response.write(chunk)
        response.close()
        log.access(response, request, environ, datetime.now() - started)
        if hasattr(answer, "close"):
            answer.close()
        if not response.status.startswith("200"):
            raise SystemExit(f"{raw[:40]!r}: {response.status}")

    return call


def http(method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    environ["wsgi.input"].read()
    body = b'{"ok":true}'
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def hello() -> Flask:
    app = Flask("hello")

    @app.post("/")
    def index() -> Response:
        return jsonify(ok=True)

    return app


def scenarios(directory: Path, staleness_ms: int | None = None) -> dict[str, Callable[[], None]]:
    passphrase = directory / "master.key"
    passphrase.write_bytes(b"correct horse battery staple\n")
    os.chmod(passphrase, 0o400)
    (directory / "policy.yaml").write_text(POLICY, encoding="utf-8")
    settings = Settings(
        database_dsn=str(directory / "kms.db"),
        master_passphrase_file=passphrase,
        kdf_iterations=1_000,
        insecure_test_kdf_floor=1_000,
        policy_file=directory / "policy.yaml",
        audit_path=directory / "audit.log",
    )
    if staleness_ms is not None:
        settings = settings.with_overrides(cache_staleness_ms=staleness_ms)
    init_database(settings)
    app = create_app(settings, keyring=open_master_keyring(settings))
    client = app.test_client()
    client.environ_base["gunicorn.socket"] = cast(Any, _Connection())
    aes = client.post("/v1/kms/keys", json={"purpose": "encrypt"}).get_json()["key_id"]
    ecdsa = client.post(
        "/v1/kms/keys", json={"purpose": "sign", "algorithm": "ECDSA-P256"}
    ).get_json()["key_id"]
    small = base64.b64encode(os.urandom(256)).decode()
    ciphertext = client.post(
        "/v1/kms/encrypt", json={"key_id": aes, "plaintext": small}
    ).get_json()["ciphertext"]
    logged, unlogged = _config(directory, True), _config(directory, False)
    encrypt = http("POST", "/v1/kms/encrypt", {"key_id": aes, "plaintext": small})
    return {
        "bare": served(bare, logged, http("POST", "/", {"a": 1})),
        "bare-nolog": served(bare, unlogged, http("POST", "/", {"a": 1})),
        "hello": served(hello(), logged, http("POST", "/", {"a": 1})),
        "hello-nolog": served(hello(), unlogged, http("POST", "/", {"a": 1})),
        "healthz": served(app, logged, http("GET", "/healthz")),
        "encrypt": served(app, logged, encrypt),
        "encrypt-nolog": served(app, unlogged, encrypt),
        "decrypt": served(
            app, logged, http("POST", "/v1/kms/decrypt", {"key_id": aes, "ciphertext": ciphertext})
        ),
        "sign-p256": served(
            app, logged, http("POST", "/v1/kms/sign", {"key_id": ecdsa, "message": small})
        ),
    }


#: The environment variable that tells the process valgrind runs which scenario to count.
COUNTED = "KMS_PROFILE_STACK_COUNTED"
COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(name: str, calls: int) -> float:
    """Instructions per request of scenario ``name``: its ``calls`` requests, counted by
    callgrind in a process of its own (``counted``), where only they are counted."""
    with tempfile.TemporaryDirectory(prefix="kms-callgrind-") as directory:
        result = subprocess.run(  # noqa: S603 - a fixed command
            [
                _tool("valgrind"),
                "--tool=callgrind",
                "--instr-atstart=no",
                "--collect-atstart=no",
                "--toggle-collect=qsort*",
                f"--callgrind-out-file={directory}/callgrind.out",
                sys.executable,
                __file__,
                "--calls",
                str(calls),
            ],
            # One string hashing in every run: dictionaries and sets then lay out alike.
            env={**os.environ, COUNTED: name, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
    found = COLLECTED.search(result.stderr)
    if found is None:
        raise SystemExit(f"{name}: callgrind counted nothing:\n{result.stderr[-2000:]}")
    return int(found.group(1)) / calls


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"--instructions needs {name} (apt install valgrind)")
    return path


def counted(name: str, calls: int) -> None:
    """Under callgrind: warm up, switch instrumentation on, then run the ``calls`` requests
    inside libc's ``qsort`` (called back once), the only place where collection is on."""
    with tempfile.TemporaryDirectory(prefix="kms-stack-") as directory:
        call = scenarios(Path(directory), staleness_ms=MAX_CACHE_STALENESS_MS)[name]
        for _ in range(50):
            call()
        # What start-up made is left out of the collector's oldest generation: a full
        # collection over it, whenever it falls in the counted requests, would swing the count
        # by several per cent between runs of the same code.
        gc.collect()
        gc.freeze()
        # Instrumentation on without counting: collection is off outside qsort. Spin while it
        # is switched on: callgrind takes the command only while this process runs code.
        control = subprocess.Popen(  # noqa: S603 - a fixed command
            [_tool("callgrind_control"), "-i", "on", str(os.getpid())], stdout=subprocess.DEVNULL
        )
        while control.poll() is None:
            pass

        def loop(_a: int, _b: int) -> int:
            for _ in range(calls):
                call()
            return 0

        compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(loop)
        one = (ctypes.c_int * 2)(1, 2)  # two elements: qsort compares them once
        ctypes.CDLL(None).qsort(one, 2, ctypes.sizeof(ctypes.c_int), compare)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma-separated scenarios")
    parser.add_argument("--profile", help="a scenario to run under cProfile")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per request (callgrind)"
    )
    arguments = parser.parse_args()
    if os.environ.get(COUNTED):
        counted(os.environ[COUNTED], arguments.calls)
        return
    if arguments.instructions:
        for name in arguments.only.split(",") if arguments.only else ["healthz", "encrypt"]:
            per_request = instructions(name, arguments.calls)
            print(f"{name:14} {per_request:10,.0f} instructions per request", flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="kms-stack-") as directory:
        table = scenarios(Path(directory))
        if arguments.profile:
            call = table[arguments.profile]
            for _ in range(100):
                call()
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
            for _ in range(arguments.calls):
                call()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(60)
            return
        names = arguments.only.split(",") if arguments.only else list(table)
        for _ in range(arguments.rounds):
            for name in names:
                call = table[name]
                for _ in range(100):
                    call()
                started = time.thread_time()
                for _ in range(arguments.calls):
                    call()
                cpu = (time.thread_time() - started) / arguments.calls * 1e6
                print(f"{name:14} {cpu:8.1f} us CPU per request", flush=True)


if __name__ == "__main__":
    main()
