"""gunicorn settings for the floor scenarios: kms's own, with the application replaced.

    python -m gunicorn -c python:bench.floor_conf   (with KMS_CONFIG and BENCH_FLOOR_APP set)

Every serving setting is taken from ``kms.gunicorn_conf`` as it reads the same kms configuration
file the kms server under test gets: the bind address, workers, threads, keep-alive and timeouts,
kms's worker class (event loop, deadlines, connection balance) with the serving limits it
configures, the certificates, and the TLS context built by the same ``ssl_context`` hook, once
in the master and inherited by the workers. What differs is only what the floor leaves out: the
application is ``BENCH_FLOOR_APP`` (``bench.floor``), there is no access log, and nothing of the
keystore is opened (no master key, database, audit log, policy hooks or metrics).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kms.gunicorn_conf as kms_conf
from kms.server.balance import assign_slot, release_slot

wsgi_app = os.environ["BENCH_FLOOR_APP"]
bind = kms_conf.bind
workers = kms_conf.workers
threads = kms_conf.threads
worker_class = kms_conf.worker_class
logger_class = kms_conf.logger_class
keepalive = kms_conf.keepalive
timeout = kms_conf.timeout
graceful_timeout = kms_conf.graceful_timeout
control_socket_disable = kms_conf.control_socket_disable
certfile = kms_conf.certfile
keyfile = kms_conf.keyfile
ca_certs = kms_conf.ca_certs
cert_reqs = kms_conf.cert_reqs
ssl_context = kms_conf.ssl_context
proc_name = "kms-bench-floor"
accesslog = None
errorlog = "-"


def on_starting(server: Any) -> None:
    # The master's context, as kms builds and installs it for its workers to inherit.
    kms_conf.start_tls(server, logging.getLogger("kms"))


def pre_fork(server: Any, worker: Any) -> None:
    assign_slot(worker, server.WORKERS.values())


def child_exit(server: Any, worker: Any) -> None:
    release_slot(worker)


def on_exit(server: Any) -> None:
    # kms.gunicorn_conf made its runtime directory when it was imported.
    kms_conf.remove_runtime()
