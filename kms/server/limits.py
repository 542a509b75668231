"""The serving limits the kms worker enforces, taken from kms's settings.

``kms.gunicorn_conf`` calls ``configure`` in the gunicorn master at import time; workers are
forked after that and inherit the value. A worker started without it (a hand-written gunicorn
config naming the worker class) uses the defaults of ``kms.settings.Settings``.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass
from typing import Any

from kms.settings import DEFAULT_MAX_BODY_BYTES, Settings

#: File descriptors a worker needs besides its client connections (database, logs, pipes).
FILE_DESCRIPTOR_RESERVE = 256


@dataclass(frozen=True)
class ServerLimits:
    handshake_timeout: float = 5.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    body_min_rate: int = 1024
    max_connections: int = 1000
    max_connections_per_identity: int = 100
    write_timeout: float = 10.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: ``server.tls_context_cache``: False builds a TLS context per connection (a diagnostic).
    tls_context_cache: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            handshake_timeout=float(settings.handshake_timeout),
            header_timeout=float(settings.header_timeout),
            body_timeout=float(settings.body_timeout),
            body_min_rate=settings.body_min_rate,
            max_connections=settings.max_connections,
            max_connections_per_identity=settings.max_connections_per_identity,
            write_timeout=float(settings.write_timeout),
            max_body_bytes=settings.max_body_bytes,
            tls_context_cache=settings.tls_context_cache,
        )


_configured: ServerLimits | None = None


def configure(limits: ServerLimits) -> None:
    global _configured
    _configured = limits


def current_limits() -> ServerLimits:
    return _configured if _configured is not None else ServerLimits()


def raise_file_limit(max_connections: int, log: Any) -> None:
    """Let the soft open-file limit fit ``server.max_connections`` (up to the hard limit).

    systemd's default soft limit is 1024, less than the default cap plus the database's and
    gunicorn's own descriptors; raising the soft limit up to the hard one needs no privilege.
    """
    needed = max_connections + FILE_DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open-file limit %d is below server.max_connections + %d; raise LimitNOFILE",
            soft,
            FILE_DESCRIPTOR_RESERVE,
        )
