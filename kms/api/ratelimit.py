"""Rate limits per identity (settings ``rate_limit.rate`` and ``rate_limit.burst``).

Over the limit a request gets 429 ``{"error": "rate limit exceeded"}`` with ``Retry-After``,
before the policy or the view sees it. The health checks are never limited: a probe must not
fail because a client is busy. How the workers share the buckets: ``kms.ratelimit``.
"""

from __future__ import annotations

from flask import Flask

from kms.api.context import g_proxy, request_proxy
from kms.api.operations import declared_operation
from kms.errors import RateLimited
from kms.ratelimit import SharedTokenBuckets


def register_rate_limit(app: Flask, buckets: SharedTokenBuckets | None) -> None:
    if buckets is None:
        return

    @app.before_request
    def limit_rate() -> None:
        declared = declared_operation(app, request_proxy._get_current_object().endpoint)
        if declared is not None and not declared.needs_policy:
            return
        wait = buckets.take(g_proxy._get_current_object().identity)
        if wait:
            raise RateLimited(retry_after=wait)
