"""``kms.gunicorn_conf`` as gunicorn reads it: the bind address, the worker settings, the TLS
floor, and the exit hooks that close the keyring.

The module reads kms's settings when imported, so each check imports it in a fresh interpreter
with its own ``KMS_CONFIG``; the developer's ``KMS_*`` variables are left out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kms import wsgi
from kms.app import REPOSITORY
from kms.devcerts import write_dev_certificates
from kms.service.keyring import RootKeyring
from kms.settings import Settings
from tests.helpers.tls import client_as

PROBE = r"""
import gc, json, os, ssl, types

import kms.gunicorn_conf as conf
from kms import wsgi
from kms.service.keyring import RootKeyring
from kms.settings import Settings

context = conf.ssl_context(None, lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
report = {
    "bind": conf.bind,
    "workers": conf.workers,
    "threads": conf.threads,
    "worker_class": conf.worker_class,
    "minimum_version": context.minimum_version.name,
    "verify_mode": context.verify_mode.name,
    "cert_reqs": conf.cert_reqs.name,
}
# What a worker's and the master's exit hooks do to the master key they inherited.
for hook in ("worker_exit", "on_exit"):
    buffer = bytearray(os.urandom(32))
    wsgi.install(Settings(database_dsn="unused.db"), RootKeyring(buffer))
    getattr(conf, hook)(None, None) if hook == "worker_exit" else conf.on_exit(None)
    report[hook + "_zeroised"] = buffer == bytearray(32)
# What gunicorn's master calls once it listens, before it forks the first worker.
conf.when_ready(types.SimpleNamespace(LISTENERS=[]))
report["frozen_before_fork"] = gc.get_freeze_count()
print(json.dumps(report))
"""


def probe(tmp_path: Path, server_section: str) -> dict[str, Any]:
    # Real ones: the start hook checks the TLS files before anything else (kms.server.tlsfiles).
    write_dev_certificates(tmp_path / "tls")
    for name in ("server.crt", "server.key", "ca.pem"):
        shutil.copy(tmp_path / "tls" / name, tmp_path / name)
    config = tmp_path / "config.yaml"
    config.write_text(
        "server:\n"
        f'  server_cert: "{tmp_path / "server.crt"}"\n'
        f'  server_key: "{tmp_path / "server.key"}"\n'
        f'  ca_cert: "{tmp_path / "ca.pem"}"\n'
        f"{server_section}"
        "database:\n"
        f'  dsn: "{tmp_path / "kms.db"}"\n',
        encoding="utf-8",
    )
    environ = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
    environ["KMS_CONFIG"] = str(config)
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_defaults_bind_localhost_only_with_the_documented_workers(tmp_path: Path) -> None:
    report = probe(tmp_path, "")
    assert report["bind"] == ["127.0.0.1:8080"]
    assert (report["workers"], report["threads"], report["worker_class"]) == (
        2,
        4,
        "kms.server.worker.KMSWorker",
    )


def test_configured_host_port_workers_and_threads_reach_gunicorn(tmp_path: Path) -> None:
    report = probe(tmp_path, "  host: '::1'\n  port: 9443\n  workers: 3\n  threads: 7\n")
    assert report["bind"] == ["[::1]:9443"]
    assert (report["workers"], report["threads"]) == (3, 7)


def test_tls_floor_is_1_2_and_client_certificates_are_required(tmp_path: Path) -> None:
    report = probe(tmp_path, "")
    assert report["minimum_version"] == "TLSv1_2"
    assert report["verify_mode"] == "CERT_REQUIRED"
    assert report["cert_reqs"] == "CERT_REQUIRED"


def test_exit_hooks_overwrite_the_inherited_master_key(tmp_path: Path) -> None:
    """SIGTERM makes gunicorn call ``worker_exit`` in each worker and ``on_exit`` in the master;
    both must reach the keyring (the signal itself is exercised by the startup tests)."""
    report = probe(tmp_path, "")
    assert report["worker_exit_zeroised"] is True
    assert report["on_exit_zeroised"] is True


def test_the_heap_the_workers_inherit_is_frozen(tmp_path: Path) -> None:
    """The master freezes its heap before the first fork: no worker's garbage collection (nor
    the one at its exit) walks the objects it shares with the master."""
    report = probe(tmp_path, "")
    assert report["frozen_before_fork"] > 10_000


def test_wsgi_close_closes_the_apps_and_the_keyring(initialised: Settings) -> None:
    buffer = bytearray(os.urandom(32))
    keyring = RootKeyring(buffer)
    wsgi.install(initialised, keyring)
    app = wsgi.application()
    client = client_as(app)
    assert client.get("/v1/kms/keys").status_code == 200
    engine = app.extensions[REPOSITORY]._engine
    assert engine.pool.checkedin() == 1  # the request's connection, pooled for the next one

    wsgi.close()

    assert engine.pool.checkedin() == 0  # "closes the database"
    assert buffer == bytearray(32)
    assert "open=False" in repr(keyring)
    # Closed and forgotten: another application() cannot start on the overwritten key.
    with pytest.raises(RuntimeError, match="master key"):
        wsgi.application()
