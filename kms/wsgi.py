"""The gunicorn entry point: ``kms.wsgi:application()``.

The master key is derived once, in gunicorn's master process, by ``kms.gunicorn_conf``'s
``on_starting`` hook, which hands it to ``install``. Workers are forked after that and inherit it;
each worker then calls ``application()`` and opens its own database connections.
"""

from __future__ import annotations

from flask import Flask

from kms.app import REPOSITORY, create_app
from kms.service.keyring import Keyring
from kms.settings import Settings

_installed: tuple[Settings, Keyring] | None = None
_apps: list[Flask] = []


def install(settings: Settings, keyring: Keyring) -> None:
    global _installed
    _installed = (settings, keyring)


def application() -> Flask:
    if _installed is None:
        raise RuntimeError(
            "kms.wsgi:application() needs the master key loaded by kms.gunicorn_conf; "
            "start kms with `kms serve` or `gunicorn -c python:kms.gunicorn_conf`"
        )
    settings, keyring = _installed
    app = create_app(settings, keyring=keyring)
    _apps.append(app)
    return app


def close() -> None:
    """Close this process's database connections and overwrite its copy of the master key."""
    global _installed
    while _apps:
        repository = _apps.pop().extensions.get(REPOSITORY)
        if repository is not None:
            repository.close()
    if _installed is not None:
        _installed[1].close()
        _installed = None
