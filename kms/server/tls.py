"""The server's TLS context, built once and rebuilt when its files change.

Each worker keeps one ``ssl.SSLContext`` (building one per connection would load and parse the
key for every handshake). ``ReloadableContext`` notices a replaced server certificate, key or CA
bundle on its own: at most once a second (``CHECK_INTERVAL_SECONDS``) it compares the files'
identity (device, inode, size, modification time) with the ones it loaded, and when any changed
it builds a new context from them. New connections get the new context; connections already
established keep theirs. No signal is needed and no request fails.

A half-replaced pair is never used: ``load_cert_chain`` refuses a key that is not the
certificate's (OpenSSL checks that they match), and a file that is missing or unparsable fails
the build too. Then the old context stays in use, the problem is logged once, and the files are
tried again at the next check, so finishing the replacement is enough. Replace files by writing
the new one beside the old and renaming it into place (docs/operations.md, certificate rotation).

The context is built by a function given by the caller (the worker: gunicorn's
``ssl_context`` hook, so the settings in ``kms.gunicorn_conf`` apply to every rebuild), so a
later cache of contexts (session tickets, several listeners) can share this one object.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
            except (ssl.SSLError, OSError, ValueError) as error:
                if seen != self._refused:
                    self._refused = seen
                    self._log.error(
                        "kms: TLS files changed but cannot be used together (%s); still serving "
                        "with the previous certificate, key and CA bundle: %s",
                        ", ".join(str(path) for path in self._paths),
                        getattr(error, "reason", None) or error,
                    )
                return False
            if _signature(self._paths) != seen:
                return False  # changed again while loading: load it all at the next check
            self._context = context
            self._loaded = seen
            self._refused = None
            self.generation += 1
            self._log.info(
                "kms: TLS certificate, key and CA bundle reloaded from %s",
                ", ".join(str(path) for path in self._paths),
            )
            return True
