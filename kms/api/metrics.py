"""Prometheus metrics, right across gunicorn's workers.

Under gunicorn, ``kms.gunicorn_conf`` points ``PROMETHEUS_MULTIPROC_DIR`` at a directory it
creates fresh before any worker (and this module) exists; each worker then writes its counters
to its own files there, and ``/metrics`` adds up every worker's files (``MultiProcessCollector``).
Without that variable (a single process, a test) the default registry is used.

Series: ``kms_http_requests_total{endpoint,method,status}``,
``kms_http_request_duration_seconds{endpoint}`` (histogram),
``kms_crypto_operations_total{operation,algorithm}``, ``kms_key_cache_hits_total``,
``kms_key_cache_misses_total``, ``kms_integrity_failures_total{kind}`` (key rows refused: "mac",
a MAC or algorithm that does not check out; "rollback", a row or epoch older than this node has
seen), ``kms_keys{state}`` and, per key version that was used,
``kms_key_version_encryptions{key_id,version}`` (counted against its limit, reserved blocks
included) and ``kms_key_version_decryptions{key_id,version}`` (flushed by each worker every few
seconds); these last three are read from the database when scraped, so every worker agrees.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kms.api.context import answered_algorithm, request_proxy
from kms.service.cache import KeyMaterialCache
from kms.service.keys import KMSService

#: Operations counted by algorithm: the ones that use a key's material.
CRYPTO_OPERATIONS = frozenset(
    {"encrypt", "decrypt", "sign", "verify", "datakey", "rewrap", "mac", "mac:verify"}
)
NO_ENDPOINT = "none"
log = logging.getLogger("kms")

HTTP_REQUESTS = Counter(
    "kms_http_requests", "HTTP requests answered", ["endpoint", "method", "status"]
)
HTTP_DURATION = Histogram(
    "kms_http_request_duration_seconds", "Time to answer an HTTP request", ["endpoint"]
)
CRYPTO_OPERATIONS_DONE = Counter(
    "kms_crypto_operations", "Successful cryptographic operations", ["operation", "algorithm"]
)
CACHE_HITS = Counter("kms_key_cache_hits", "Key material found in a worker's cache")
CACHE_MISSES = Counter("kms_key_cache_misses", "Key material loaded and unwrapped")
INTEGRITY_FAILURES = Counter(
    "kms_integrity_failures", "Stored rows refused: a MAC that fails, or a rollback", ["kind"]
)


class KeyStateCollector(Collector):
    """``kms_keys{state}``, counted in the database when scraped, so every worker agrees."""

    def __init__(self, service: KMSService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kms_keys", "Keys by state", labels=["state"])
        for state, count in sorted(self._service.key_counts_by_state().items()):
            family.add_metric([state], count)
        yield family
        encryptions = GaugeMetricFamily(
            "kms_key_version_encryptions",
            "Encryptions counted against a key version's limit (reserved blocks included)",
            labels=["key_id", "version"],
        )
        decryptions = GaugeMetricFamily(
            "kms_key_version_decryptions",
            "Decryptions under a key version, as flushed by the workers",
            labels=["key_id", "version"],
        )
        for key_id, version, encrypted, decrypted in self._service.use_totals():
            encryptions.add_metric([key_id, str(version)], encrypted)
            decryptions.add_metric([key_id, str(version)], decrypted)
        yield encryptions
        yield decryptions


class _CacheCounts:
    """Moves a cache's own hit/miss counts, and the rows the service refused, into the
    Prometheus counters, one delta at a time."""

    def __init__(self, cache: KeyMaterialCache, refused: dict[str, int]) -> None:
        self._cache = cache
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._service_refused = refused
        self._refused = dict.fromkeys(refused, 0)

    def publish(self) -> None:
        with self._lock:
            for kind, count in self._service_refused.items():
                if count > self._refused.get(kind, 0):
                    INTEGRITY_FAILURES.labels(kind).inc(count - self._refused.get(kind, 0))
                    self._refused[kind] = count
            hits, misses = self._cache.hits, self._cache.misses
            if hits > self._hits:
                CACHE_HITS.inc(hits - self._hits)
            if misses > self._misses:
                CACHE_MISSES.inc(misses - self._misses)
            self._hits, self._misses = hits, misses


def register_metrics(app: Flask, service: KMSService, cache: KeyMaterialCache) -> None:
    cache_counts = _CacheCounts(cache, service.trust.refused)
    for kind in service.trust.refused:
        INTEGRITY_FAILURES.labels(kind)  # shown at 0 from the start
    key_states = KeyStateCollector(service)
    app.extensions["kms.metrics"] = key_states

    # Label children looked up once per label values, not on every request.
    requests_by_labels: dict[tuple[str, str, int], Any] = {}
    durations_by_endpoint: dict[str, Any] = {}
    operations_by_labels: dict[tuple[str, str], Any] = {}

    @app.after_request
    def count(response: Response) -> Response:
        # Looked up once: each access through a proxy is a context lookup of its own.
        state, current = g._get_current_object(), request_proxy._get_current_object()
        endpoint = current.endpoint or NO_ENDPOINT
        method = current.method
        status = response.status_code
        labels = (endpoint, method, status)
        requests = requests_by_labels.get(labels)
        if requests is None:
            requests = requests_by_labels[labels] = HTTP_REQUESTS.labels(
                endpoint, method, str(status)
            )
        requests.inc()
        duration = durations_by_endpoint.get(endpoint)
        if duration is None:
            duration = durations_by_endpoint[endpoint] = HTTP_DURATION.labels(endpoint)
        duration.observe(time.perf_counter() - state.kms_started)
        operation = state.get("kms_operation_name")
        if operation in CRYPTO_OPERATIONS and status < 400:
            # A batch counts the items that succeeded (kms.api.batch), a single call one. The
            # algorithm is the one the view noted from the service's result: no second read of
            # the key ("unknown" should a view not note it).
            done = state.get("kms_items_done", 1)
            if done:
                operation_labels = (operation, answered_algorithm())
                operations = operations_by_labels.get(operation_labels)
                if operations is None:
                    operations = operations_by_labels[operation_labels] = (
                        CRYPTO_OPERATIONS_DONE.labels(*operation_labels)
                    )
                operations.inc(done)
        cache_counts.publish()
        return response


def metrics_response(app: Flask) -> Response:
    """The Prometheus text exposition of every worker's metrics plus the key counts."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    text += generate_latest(_single(app.extensions["kms.metrics"]))
    return Response(text, content_type=CONTENT_TYPE_LATEST)


def _single(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
