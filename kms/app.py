"""The application factory: the composition root, and the only module that knows every layer."""

from __future__ import annotations

import logging
import uuid

from flask import Flask, Response, g, request

from kms.api import crypto as crypto_api
from kms.api import keys as keys_api
from kms.api.caller import ENVIRON_KEY as CALLER_ENVIRON_KEY
from kms.api.caller import caller_from_environ
from kms.api.context import MAX_BODY_BYTES, SERVICE
from kms.api.errors import register_error_handlers
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import Keyring
from kms.service.keys import KMSService
from kms.settings import Settings, load_settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository

REQUEST_ID_ENVIRON_KEY = "kms.request_id"
#: Where the app keeps its repository, so that whoever serves it can close its connections.
REPOSITORY = "kms.repository"
log = logging.getLogger("kms")


def create_app(settings: Settings | None = None, keyring: Keyring | None = None) -> Flask:
    """Build the WSGI app.

    ``keyring`` is the opened master keyring; under gunicorn it was derived once in the master
    process (``kms.gunicorn_conf``). Without one, the passphrase is read here, which suits a
    single-process run such as a test or ``flask --app kms run``.
    """
    settings = load_settings() if settings is None else settings
    app = Flask("kms", static_folder=None)  # an API: no /static route
    app.config[MAX_BODY_BYTES] = settings.max_body_bytes
    app.json.sort_keys = False
    register_service(app, settings, keyring)
    register_identity(app)
    register_url_map(app)
    register_blueprints(app)
    register_error_handlers(app)
    return app


def register_service(app: Flask, settings: Settings, keyring: Keyring | None) -> None:
    if keyring is None:
        from kms.master import open_master_keyring

        keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    app.extensions[SERVICE] = KMSService(
        repository,
        keyring,
        KeyMaterialCache(settings.key_cache_size),
        verify_max_versions=settings.verify_max_versions,
        max_versions=settings.max_versions,
    )
    app.extensions[REPOSITORY] = repository


def register_identity(app: Flask) -> None:
    """Give every request an id and a caller from its TLS session, for views and the access log."""

    @app.before_request
    def identify_caller() -> None:
        g.request_id = uuid.uuid4().hex
        request.environ[REQUEST_ID_ENVIRON_KEY] = g.request_id
        g.caller = caller_from_environ(request.environ)
        request.environ[CALLER_ENVIRON_KEY] = str(g.caller)

    @app.after_request
    def tag_response(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "-")
        return response


def register_url_map(app: Flask) -> None:
    """One URL per resource, and no redirects: Werkzeug would answer ``/v1//kms/keys`` or
    ``/v1/kms/keys/%2E%2E%2F/public-key`` with a 308 to a merged path (an HTML body, and a client
    that follows it lands somewhere it did not ask for). Must run before the rules are added."""
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = True


def register_blueprints(app: Flask) -> None:
    app.register_blueprint(keys_api.blueprint)
    app.register_blueprint(crypto_api.blueprint)
