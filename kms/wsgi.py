"""The gunicorn entry point: ``kms.wsgi:application()``.

The master key is derived once, in gunicorn's master process, by ``kms.gunicorn_conf``'s
``on_starting`` hook, which hands it to ``install``. Workers are forked after that and inherit it;
each worker then calls ``application()`` and opens its own database connections.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from flask import Flask

from kms.api.audit import AUDIT_SUMMARY
from kms.api.context import SERVICE
from kms.api.policy import Policy
from kms.app import REPOSITORY, create_app
from kms.service.keyring import Keyring
from kms.settings import Settings

_installed: tuple[Settings, Keyring] | None = None
_apps: list[Flask] = []
# Loaded by the master at start and on SIGHUP; the workers forked after that inherit them.
_policy: Policy | None = None
_rate_limit_table: Path | None = None


def install(
    settings: Settings,
    keyring: Keyring,
    policy: Policy | None = None,
    rate_limit_table: Path | None = None,
) -> None:
    global _installed, _rate_limit_table
    _installed = (settings, keyring)
    _rate_limit_table = rate_limit_table
    install_policy(policy)


def install_policy(policy: Policy | None) -> None:
    """The policy for workers started from now on (gunicorn's SIGHUP starts new ones)."""
    global _policy
    _policy = policy


def application() -> Flask:
    if _installed is None:
        raise RuntimeError(
            "kms.wsgi:application() needs the master key loaded by kms.gunicorn_conf; "
            "start kms with `kms serve` or `gunicorn -c python:kms.gunicorn_conf`"
        )
    settings, keyring = _installed
    app = create_app(settings, keyring=keyring, policy=_policy, rate_limit_table=_rate_limit_table)
    _apps.append(app)
    return app


def close() -> None:
    """Write this process's audit summaries, close its database connections and overwrite its
    copy of the master key."""
    global _installed
    while _apps:
        app = _apps.pop()
        summaries = app.extensions.get(AUDIT_SUMMARY)
        if summaries is not None:
            summaries.close()
        service = app.extensions.get(SERVICE)
        if service is not None:
            # Decryption counts since the last flush; a failing database must not stop the exit.
            with contextlib.suppress(Exception):
                service.flush_use()
        repository = app.extensions.get(REPOSITORY)
        if repository is not None:
            repository.close()
    if _installed is not None:
        _installed[1].close()
        _installed = None
