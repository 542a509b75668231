"""The server's TLS context, built once and rebuilt when its files change.

Each worker keeps one ``ssl.SSLContext`` (building one per connection would load and parse the key
for every handshake). ``ReloadableContext`` notices a replaced server certificate, key, CA bundle
or CRL file on its own: at most once a second (``CHECK_INTERVAL_SECONDS``) it compares the files'
identity (device, inode, size, modification time) with the ones it loaded, and when any changed it
builds a new context from them. New connections get the new context; connections already
established keep theirs. No signal is needed and no request fails.

A half-replaced pair is never used: the files are checked first (``kms.server.tlsfiles``: each
parses as what it must hold, the key is the certificate's, the CRLs are signed by a CA of the
bundle and current) and OpenSSL refuses what is left. Then the old context stays in use, the
problem is logged once, in one line naming the file, and the files are tried again at the next
check, so finishing the replacement is enough. Replace files by writing the new one beside the old
and renaming it into place (docs/operations.md, certificate rotation).

The master builds the first context (``kms.gunicorn_conf``: a problem there is kms's one line and
exit 1), checks the files again on each pass of its loop, before it forks a worker and on SIGHUP,
and installs it (``install``): a worker inherits the context, the files it was built from and the
files last refused, and builds nothing at boot. So a worker started while the files on disk are
half replaced (SIGHUP in the middle of a swap, or a worker replaced after a crash) boots and serves
with the last good context instead of failing to boot, which would make gunicorn's master exit; and
the refusal is logged once, by the master, not again by every new worker.

The context is built by a function given by the caller (``kms.gunicorn_conf``, through gunicorn's
``ssl_context`` hook, so the settings there apply to every rebuild).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gunicorn import sock as gunicorn_sock

from kms.errors import KMSError

CHECK_INTERVAL_SECONDS = 1.0

Signature = tuple[tuple[int, int, int, int] | None, ...]


def _signature(paths: Sequence[Path]) -> Signature:
    identity: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            identity.append(None)
            continue
        identity.append((status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(identity)


class ReloadableContext:
    """An ``SSLContext`` that follows its files; ``current()`` is cheap and thread-safe."""

    def __init__(
        self,
        build: Callable[[], ssl.SSLContext],
        paths: Sequence[Path],
        log: logging.Logger | logging.LoggerAdapter,
        *,
        check_interval: float = CHECK_INTERVAL_SECONDS,
    ) -> None:
        self._build = build
        self._paths = tuple(paths)
        self._log = log
        self._interval = check_interval
        self._lock = threading.Lock()
        # The first build must succeed: a worker without a context cannot serve.
        self._loaded = _signature(self._paths)
        self._context = build()
        self._refused: Signature | None = None
        self._next_check = time.monotonic() + check_interval
        self.generation = 1
        #: A worker's inherited context logs its rebuilds and refusals at DEBUG only: the
        #: master, which follows the same files, says each change once for all of them.
        self.quiet = False

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._interval
            self.reload_if_changed()
        return self._context

    def reload_if_changed(self) -> bool:
        """Build a new context if the files changed; True if the new one is now in use."""
        with self._lock:
            seen = _signature(self._paths)
            if seen == self._loaded:
                return False
            try:
                context = self._build()
            except Exception as error:
                # Whatever went wrong, the context in use stays: in the master, an exception
                # here would stop the server (the master must never exit on a reload).
                if seen != self._refused:
                    self._refused = seen
                    self._log.log(
                        logging.DEBUG if self.quiet else logging.ERROR,
                        "kms: TLS files refused, still serving with the previous ones: %s",
                        self._describe(error),
                    )
                return False
            if _signature(self._paths) != seen:
                return False  # changed again while loading: load it all at the next check
            self._context = context
            self._loaded = seen
            self._refused = None
            self.generation += 1
            self._log.log(
                logging.DEBUG if self.quiet else logging.INFO,
                "kms: TLS files reloaded: %s",
                ", ".join(str(path) for path in self._paths),
            )
            return True

    def _describe(self, error: Exception) -> str:
        if isinstance(error, KMSError):
            return error.public_message  # names the setting and the file
        files = ", ".join(str(path) for path in self._paths)
        reason = getattr(error, "reason", None) or error
        return f"{files} cannot be used together: {reason}"


def check_crls(context: ssl.SSLContext, crl_file: Path) -> None:
    """Check every client's certificate against its issuer's CRL in ``crl_file`` (PEM).

    The CRLs join the CA bundle's store. A client whose issuer has no CRL there is refused: it
    cannot be checked, so it is not trusted. A CRL past its ``nextUpdate`` refuses every client
    of its CA (OpenSSL's rule, kept: fail closed)."""
    context.load_verify_locations(cafile=str(crl_file))
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def server_context(cfg: Any) -> ssl.SSLContext:
    """A context as gunicorn builds it from its settings (``cfg``; kms's ``ssl_context`` hook
    included), with what kms adds for every connection."""
    context = gunicorn_sock.ssl_context(cfg)
    # A TLS 1.2 renegotiation costs the server a handshake at the client's will.
    context.options |= ssl.OP_NO_RENEGOTIATION
    # No session resumption: a resumed session skips the check of the client's certificate (a
    # certificate that expired or was revoked since would still get in). One context per worker
    # would otherwise resume TLS 1.3 sessions by ticket and TLS 1.2 ones by ticket or session ID.
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    return context


#: The master's context, inherited by every worker it forks.
_installed: ReloadableContext | None = None


def install(context: ReloadableContext) -> None:
    """Make ``context`` the one workers forked from now on start with."""
    global _installed
    _installed = context


def installed() -> ReloadableContext | None:
    return _installed
