"""Health, readiness and metrics: /healthz, /readyz, /metrics.

The health checks need a verified client certificate (gunicorn refuses the handshake without
one) but no policy rule; /metrics is the operation ``metrics``.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from kms.api import schemas
from kms.api.context import service
from kms.api.docs import documented
from kms.api.metrics import metrics_response
from kms.api.operations import operation
from kms.api.policy import keys_in_scope
from kms.errors import KMSError, NotReady, StoreUnavailable

blueprint = Blueprint("health", __name__)
log = logging.getLogger("kms")


@blueprint.get("/healthz")
@operation("health", needs_policy=False)
@documented("Liveness: the process answers", response=schemas.status_response, tag="health")
def healthz() -> Response:
    """The process answers; nothing else is touched (no database)."""
    return jsonify(status="ok")


@blueprint.get("/readyz")
@operation("ready", needs_policy=False)
@documented(
    "Readiness: the database answers and the master key is loaded",
    response=schemas.ready_response,
    errors={503: "not ready: database unreachable, or master key not loaded"},
    tag="health",
)
def readyz() -> Response:
    """The database answers and the master key is loaded (it unwraps the init marker)."""
    try:
        service().check_ready()
    except StoreUnavailable:
        raise NotReady("not ready: database unreachable") from None
    except (KMSError, RuntimeError) as error:
        # RuntimeError: the keyring is closed; KMSError: the marker does not unwrap, or is gone.
        log.warning("readiness check failed: %s", type(error).__name__)
        raise NotReady("not ready: master key not loaded") from None
    backend, _ = service().master_key()
    return jsonify(status="ready", master_key_backend=backend)


@blueprint.get("/metrics")
@operation("metrics")
@documented(
    "Prometheus metrics of every worker",
    content_type=CONTENT_TYPE_LATEST,
    tag="health",
)
def metrics() -> Response:
    """Node-wide series for every caller allowed ``metrics``; per-key series for the keys its
    rules allow ``metrics`` on."""
    return metrics_response(current_app, keys_in_scope("metrics"))
