"""The application factory: the composition root, and the only module that knows every layer."""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

from kms.api import aws as aws_api
from kms.api import crypto as crypto_api
from kms.api import health as health_api
from kms.api import keys as keys_api
from kms.api import openapi as openapi_api
from kms.api.audit import register_audit
from kms.api.aws import aliases as aws_aliases
from kms.api.aws import requests as aws_requests
from kms.api.aws import views as aws_views
from kms.api.aws.keys import Account
from kms.api.context import MAX_BODY_BYTES, SERVICE, g_proxy, request_proxy
from kms.api.errors import register_error_handlers
from kms.api.metrics import register_metrics
from kms.api.operations import declared_operation, operation_name, request_target
from kms.api.policy import Policy, load_policy, policy_of, register_policy
from kms.api.ratelimit import register_rate_limit
from kms.api.vault import views as vault_api
from kms.audit import AuditKey, AuditLog
from kms.ratelimit import SharedTokenBuckets, create_table
from kms.server.identity import ENVIRON_KEY as CALLER_ENVIRON_KEY
from kms.server.identity import IDENTITY_ENVIRON_KEY, caller_from_environ
from kms.service.cache import KeyMaterialCache, KeyRowCache
from kms.service.keyring import Keyring
from kms.service.keys import CURRENT_REQUESTER, Generations, KMSService, Requester
from kms.settings import Settings, load_settings
from kms.store.changes import LocalChanges, PostgresChangeListener, open_changes
from kms.store.db import WALCheckpointer, create_kms_engine
from kms.store.generations import GenerationJournal, journal_path
from kms.store.repository import SQLKeyRepository
from kms.store.serving import SERVER_APPLICATION_NAME

REQUEST_ID_ENVIRON_KEY = "kms.request_id"
#: Where the app keeps its repository, so that whoever serves it can close its connections.
REPOSITORY = "kms.repository"
log = logging.getLogger("kms")


class KMSFlask(Flask):
    """Flask, except that whether a hook or view is a coroutine is decided once per function.

    Flask passes every request hook and the view through ``ensure_sync`` on every request (ten
    or so per kms request), and each call asks ``inspect`` whether the function is a coroutine:
    3% of an encrypt's CPU time in process (see docs/performance.md). The functions are the
    ones registered at start, so the answer is kept per function; at most ``MAX_KEPT`` of them,
    should a function made per request (``after_this_request``) ever come through.
    """

    MAX_KEPT = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        sync = self._sync.get(func)
        if sync is None:
            sync = super().ensure_sync(func)
            if len(self._sync) < self.MAX_KEPT:
                self._sync[func] = sync
        return sync


def create_app(
    settings: Settings | None = None,
    keyring: Keyring | None = None,
    policy: Policy | None = None,
    rate_limit_table: Path | None = None,
) -> Flask:
    """Build the WSGI app.

    ``keyring`` is the opened master keyring and ``policy`` the authorization policy; under
    gunicorn both were loaded once in the master process (``kms.gunicorn_conf``), which also
    created the rate-limit table its workers share. Without them, they are read here, which suits
    a single-process run such as a test or ``flask --app kms run``.

    The request hooks run in the order registered: who is asking and for what (identity),
    metrics, the rate limit, the policy, a change's audit request line (once the request is
    allowed: a throttled or denied one is counted in a summary line instead), and only then the
    view; the audit's answer line is written before the answer is sent (kms.api.audit).
    """
    settings = load_settings() if settings is None else settings
    app = KMSFlask("kms", static_folder=None)  # an API: no /static route
    app.config[MAX_BODY_BYTES] = settings.max_body_bytes
    app.config[aws_api.ACCOUNT] = Account(settings.aws_region, settings.aws_account_id)
    cast(DefaultJSONProvider, app.json).sort_keys = False  # Flask's default provider
    if keyring is None:
        from kms.master import open_master_keyring

        keyring = open_master_keyring(settings)
    service, cache = register_service(app, settings, keyring)
    register_identity(app)
    register_url_map(app)
    register_metrics(app, service, cache, settings.metrics_max_key_series)
    register_rate_limit(app, _token_buckets(app, settings, rate_limit_table))
    register_policy(app, _policy(settings) if policy is None else policy)
    register_audit(
        app,
        # The audit key, not the keyring: the audit log never holds the master key.
        AuditLog(settings.audit_path, AuditKey.of(keyring)) if settings.audit_path else None,
        settings.audit_summary_seconds,
    )
    register_blueprints(app)
    register_error_handlers(app)
    return app


def register_service(
    app: Flask, settings: Settings, keyring: Keyring
) -> tuple[KMSService, KeyMaterialCache]:
    engine = create_kms_engine(
        settings.database_url,
        application_name=SERVER_APPLICATION_NAME,
        background_checkpoints=True,
    )
    # A server makes the SQLite change counters if they are missing (kms.store.changes).
    changes = open_changes(settings.database_url, create=True)
    repository = SQLKeyRepository(engine, changes)
    if engine.dialect.name == "sqlite":
        checkpointer = WALCheckpointer(engine)
        checkpointer.start()
        repository.on_close(checkpointer.stop)
    if engine.dialect.name == "postgresql" and settings.cache_staleness_ms > 0:
        assert isinstance(changes, LocalChanges)  # noqa: S101 - open_changes' PostgreSQL answer
        listener = PostgresChangeListener(
            settings.database_url, changes, application_name=SERVER_APPLICATION_NAME
        )
        listener.start()
        # Stopped when the worker closes the repository (kms.wsgi.close at worker exit).
        repository.on_close(listener.stop)
    cache = KeyMaterialCache(settings.key_cache_size, settings.key_cache_bytes)
    rows = KeyRowCache(
        settings.cache_staleness_ms,
        repository.change_mark,
        max_entries=settings.key_cache_size,
        max_bytes=settings.key_cache_bytes,
    )
    journal = journal_path(settings.state_file, settings.database_url)
    generations = Generations(
        None if journal is None else GenerationJournal(journal, keyring.keystore_id)
    )
    repository.on_close(generations.close)
    service = KMSService.from_settings(
        settings, repository, keyring, cache=cache, rows=rows, generations=generations
    )
    app.extensions[SERVICE] = service
    app.extensions[REPOSITORY] = repository
    return service, cache


def register_identity(app: Flask) -> None:
    """Give every request an id, a caller from its TLS session (and its identity as the policy
    names it), the operation its view declares and the key it names, for the hooks that follow,
    the views and the access log; then refuse a certificate the policy does not admit at all
    (several subject CNs, or on the deny list) before any other hook runs."""

    @app.before_request
    def identify_caller() -> None:
        # The objects behind the proxies, looked up once: each access through ``g`` or
        # ``request`` is a context lookup of its own (3-6 us each on this busy machine).
        state = g_proxy._get_current_object()
        current = request_proxy._get_current_object()
        environ = current.environ
        state.kms_started = time.perf_counter()
        state.request_id = environ[REQUEST_ID_ENVIRON_KEY] = uuid.uuid4().hex
        declared = declared_operation(app, current.endpoint)
        state.kms_operation_name = (
            operation_name(declared, current) if declared is not None else None
        )
        state.caller = caller = caller_from_environ(environ)
        environ[CALLER_ENVIRON_KEY] = str(caller)
        policy = policy_of(app)
        state.identity = environ[IDENTITY_ENVIRON_KEY] = identity = policy.identity_of(caller)
        state.kms_target = request_target(declared, current)
        # For the service's record of who still uses a key pending deletion.
        state.kms_requester_token = CURRENT_REQUESTER.set(
            Requester(caller=str(identity), operation=state.kms_operation_name or "-")
        )
        # Last, so that the refusal's audit and access lines know who and what it was.
        policy.admit(caller)

    @app.teardown_request
    def forget_requester(_error: BaseException | None) -> None:
        token = g_proxy._get_current_object().pop("kms_requester_token", None)
        if token is not None:
            try:
                CURRENT_REQUESTER.reset(token)
            except ValueError:  # set in another context: make sure nothing outlives the request
                CURRENT_REQUESTER.set(None)

    @app.after_request
    def tag_response(response: Response) -> Response:
        response.headers["X-Request-Id"] = g_proxy._get_current_object().get("request_id", "-")
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
    app.register_blueprint(health_api.blueprint)
    app.register_blueprint(openapi_api.blueprint)
    # One blueprint; its views are in these modules (imported for their routes).
    assert aws_views.blueprint is aws_aliases.blueprint is aws_requests.blueprint  # noqa: S101
    app.register_blueprint(aws_requests.blueprint)
    aws_api.route_by_target(app)  # POST / with X-Amz-Target: TrentService.*
    app.register_blueprint(vault_api.blueprint)


def routes_only_app() -> Flask:
    """The app's URL map and views with nothing behind them (no settings, database or keys):
    what ``kms openapi`` describes."""
    app = Flask("kms", static_folder=None)
    register_url_map(app)
    register_blueprints(app)
    return app


def _policy(settings: Settings) -> Policy:
    policy = load_policy(settings.policy_file)
    for warning in policy.warnings:
        log.warning("%s", warning)
    return policy


def _token_buckets(app: Flask, settings: Settings, table: Path | None) -> SharedTokenBuckets | None:
    if settings.rate_limit_rate is None or settings.rate_limit_burst is None:
        return None
    if table is None:
        # A single process (a test): a private table, kept as long as the app.
        private = tempfile.NamedTemporaryFile(prefix="kms-rate-limit-")  # noqa: SIM115
        app.extensions["kms.rate_limit_file"] = private
        table = Path(private.name)
        create_table(table)
    return SharedTokenBuckets(table, settings.rate_limit_rate, settings.rate_limit_burst)
