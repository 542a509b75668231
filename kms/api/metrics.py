"""Prometheus metrics, right across gunicorn's workers.

Under gunicorn, ``kms.gunicorn_conf`` points ``PROMETHEUS_MULTIPROC_DIR`` at a directory it
creates fresh before any worker (and this module) exists; each worker then writes its counters
to its own files there, and ``/metrics`` adds up every worker's files (``MultiProcessCollector``).
Without that variable (a single process, a test) the default registry is used.

Series: ``kms_http_requests_total{endpoint,method,status}``,
``kms_http_request_duration_seconds{endpoint}`` (histogram),
``kms_crypto_operations_total{operation,algorithm}``, ``kms_decryptions_refused_total{reason}``
(ciphertexts answered "invalid ciphertext": "fenced", authentic but of a version below
``min_decryption_version``; "invalid", not authentic), ``kms_key_cache_hits_total``,
``kms_key_cache_misses_total``, ``kms_key_list_rows_examined_total`` (key rows the listings
read and MAC-checked), ``kms_integrity_failures_total{kind}`` (key rows refused: "mac", a MAC
or algorithm that does not check out; "rollback", a row or epoch older than this node has
seen), ``kms_keys{state}`` and, per key version that was used,
``kms_key_version_encryptions{key_id,version}`` (encryptions made: one encryption counts 1),
``kms_key_version_decryptions{key_id,version}`` (both flushed by each worker every few seconds,
and by the worker that answers the scrape first) and
``kms_key_version_encryptions_reserved{key_id,version}`` (counted against the version's limit:
processes reserve blocks of ``kms.encryption_block``, so one encryption reserves a whole block),
with ``kms_key_version_series_truncated``; these last five are read from the database when
scraped, so every worker agrees.

Bounded whatever clients send: every label value comes from a closed set. An endpoint is one of
the URL map's or ``none``; a method outside ``METHODS`` counts as ``other``; a status outside
``STATUSES`` counts as its class (``2xx`` ... ``5xx``); operations and algorithms are kms's own.
So ``kms_http_requests_total`` has at most (endpoints + 1) x 9 x (len(STATUSES) + 5) series, and
a worker's label caches as many entries. The per-key series are the scraping caller's business
only: they cover the keys its rules allow ``metrics`` on (``keys`` globs, as for any operation),
at most ``metrics.max_key_series`` versions in key order; past that the rest are left out and
``kms_key_version_series_truncated`` is 1. Finding them reads the used versions a page at a time
and stops at the limit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response
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

from kms.api.context import (
    answered_algorithm,
    answered_fenced_versions,
    answered_invalid_ciphertexts,
    answered_rows_examined,
    g_proxy,
    request_proxy,
)
from kms.service.cache import KeyMaterialCache
from kms.service.keys import KMSService

#: Operations counted by algorithm: the ones that use a key's material.
CRYPTO_OPERATIONS = frozenset(
    {"encrypt", "decrypt", "sign", "verify", "datakey", "rewrap", "mac", "mac:verify"}
)
NO_ENDPOINT = "none"
#: Methods named in the labels as they are; any other is counted as ``OTHER_METHOD``.
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "LIST"})
OTHER_METHOD = "other"
#: Statuses named in the labels as they are (what kms and Werkzeug answer); any other is
#: counted by its class, ``2xx`` ... ``5xx``.
STATUSES = frozenset(
    {200, 201, 204, 400, 401, 403, 404, 405, 406, 409, 411, 413, 415, 429, 500, 501, 503}
)
#: Used versions read from the database per query while looking for the caller's.
USE_PAGE = 1000
METRICS = "kms.metrics"
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
LIST_ROWS_EXAMINED = Counter(
    "kms_key_list_rows_examined", "Key rows read and MAC-checked by key listings"
)
DECRYPTIONS_REFUSED = Counter(
    "kms_decryptions_refused",
    "Ciphertexts refused, all answered 'invalid ciphertext': 'fenced' authenticated but was made "
    "by a version below min_decryption_version, 'invalid' did not authenticate",
    ["reason"],
)
#: The reasons of ``kms_decryptions_refused_total``.
REFUSAL_REASONS = ("fenced", "invalid")
INTEGRITY_FAILURES = Counter(
    "kms_integrity_failures", "Stored rows refused: a MAC that fails, or a rollback", ["kind"]
)


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER_METHOD


def status_label(status: int) -> str:
    if status in STATUSES:
        return str(status)
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class KeyStateCollector(Collector):
    """``kms_keys{state}``, counted in the database when scraped, so every worker agrees."""

    def __init__(self, service: KMSService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kms_keys", "Keys by state", labels=["state"])
        for state, count in sorted(self._service.key_counts_by_state().items()):
            family.add_metric([state], count)
        yield family


class MasterKeyCollector(Collector):
    """``kms_master_key_opened_timestamp_seconds{backend}``: when this node's master-key backend
    opened the root secret (once, in gunicorn's master, before any worker forked)."""

    def __init__(self, service: KMSService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backend, opened_at = self._service.master_key()
        family = GaugeMetricFamily(
            "kms_master_key_opened_timestamp_seconds",
            "When the master-key backend opened the root secret (Unix time), by backend",
            labels=["backend"],
        )
        if opened_at is not None:
            family.add_metric([backend], opened_at)
        yield family


class KeyUseCollector(Collector):
    """The use of each key version ``in_scope`` accepts, at most ``limit`` of them in key order,
    read from the database when scraped (so every worker agrees)."""

    def __init__(self, service: KMSService, in_scope: Callable[[str], bool], limit: int) -> None:
        self._service = service
        self._in_scope = in_scope
        self._limit = limit

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # This worker's counts first: on a one-worker node the scrape is then exact.
        self._service.flush_use()
        encryptions = GaugeMetricFamily(
            "kms_key_version_encryptions",
            "Encryptions made under a key version, as flushed by the workers",
            labels=["key_id", "version"],
        )
        reserved = GaugeMetricFamily(
            "kms_key_version_encryptions_reserved",
            "Encryptions reserved against a key version's limit, in blocks (used or not)",
            labels=["key_id", "version"],
        )
        decryptions = GaugeMetricFamily(
            "kms_key_version_decryptions",
            "Decryptions under a key version, as flushed by the workers",
            labels=["key_id", "version"],
        )
        truncated = False
        for shown, (key_id, version, encrypted, decrypted, held) in enumerate(
            self._versions_in_scope()
        ):
            if shown == self._limit:
                truncated = True
                break
            labels = [key_id, str(version)]
            encryptions.add_metric(labels, encrypted)
            decryptions.add_metric(labels, decrypted)
            reserved.add_metric(labels, held)
        yield encryptions
        yield decryptions
        yield reserved
        yield GaugeMetricFamily(
            "kms_key_version_series_truncated",
            "1 when key versions in the caller's scope were left out (metrics.max_key_series)",
            value=int(truncated),
        )

    def _versions_in_scope(self) -> Iterator[tuple[str, int, int, int, int]]:
        page_size = min(USE_PAGE, self._limit + 1)
        after: tuple[str, int] | None = None
        while True:
            page = self._service.use_totals(after=after, limit=page_size)
            for row in page:
                if self._in_scope(row[0]):
                    yield row
            if len(page) < page_size:
                return
            after = (page[-1][0], page[-1][1])


@dataclass(frozen=True)
class _Scrape:
    service: KMSService
    max_key_series: int


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


def register_metrics(
    app: Flask, service: KMSService, cache: KeyMaterialCache, max_key_series: int
) -> None:
    cache_counts = _CacheCounts(cache, service.trust.refused)
    for kind in service.trust.refused:
        INTEGRITY_FAILURES.labels(kind)  # shown at 0 from the start
    refused_fenced, refused_invalid = (DECRYPTIONS_REFUSED.labels(r) for r in REFUSAL_REASONS)
    app.extensions[METRICS] = _Scrape(service, max_key_series)
    endpoints = app.view_functions  # filled in later by the blueprints; read per request

    # Label children looked up once per label values, not on every request: as many entries as
    # label combinations, which the closed sets bound.
    requests_by_labels: dict[tuple[str, str, str], Any] = {}
    durations_by_endpoint: dict[str, Any] = {}
    operations_by_labels: dict[tuple[str, str], Any] = {}

    @app.after_request
    def count(response: Response) -> Response:
        # Looked up once: each access through a proxy is a context lookup of its own.
        state, current = g_proxy._get_current_object(), request_proxy._get_current_object()
        endpoint = current.endpoint
        if endpoint is None or endpoint not in endpoints:
            endpoint = NO_ENDPOINT
        status = response.status_code
        labels = (endpoint, method_label(current.method), status_label(status))
        requests = requests_by_labels.get(labels)
        if requests is None:
            requests = requests_by_labels[labels] = HTTP_REQUESTS.labels(*labels)
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
                operation_labels = (operation, answered_algorithm(state))
                operations = operations_by_labels.get(operation_labels)
                if operations is None:
                    operations = operations_by_labels[operation_labels] = (
                        CRYPTO_OPERATIONS_DONE.labels(*operation_labels)
                    )
                operations.inc(done)
        fenced = len(answered_fenced_versions(state))
        invalid = answered_invalid_ciphertexts(state)
        if fenced:
            refused_fenced.inc(fenced)
        if invalid:
            refused_invalid.inc(invalid)
        examined = answered_rows_examined(state)
        if examined:
            LIST_ROWS_EXAMINED.inc(examined)
        cache_counts.publish()
        return response


def metrics_response(app: Flask, in_scope: Callable[[str], bool]) -> Response:
    """The Prometheus text exposition of every worker's metrics, the key counts, and the use of
    the key versions ``in_scope`` accepts (the caller's)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    scrape: _Scrape = app.extensions[METRICS]
    text += generate_latest(_single(KeyStateCollector(scrape.service)))
    text += generate_latest(_single(MasterKeyCollector(scrape.service)))
    text += generate_latest(
        _single(KeyUseCollector(scrape.service, in_scope, scrape.max_key_series))
    )
    return Response(text, content_type=CONTENT_TYPE_LATEST)


def _single(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
