"""gunicorn settings for kms, read from kms's own configuration.

Used by ``kms serve`` and by plain ``gunicorn -c python:kms.gunicorn_conf``. gunicorn terminates
mutual TLS (client certificates required, TLS 1.2 or newer) and runs kms's own worker, derived
from gthread (``kms.server.worker``), so TLS connections stay alive between requests (a new
handshake per request costs far more than the request itself) and no slow client holds a thread.

``on_starting`` runs once in the master, before the port is bound and before any worker forks:
it reads the passphrase (file or prompt: the master owns the terminal), derives the master key and
unwraps the init marker. Any problem prints one line and exits non-zero with no worker started.
"""

from __future__ import annotations

import ssl
import sys
from typing import TYPE_CHECKING, Any

from kms.errors import KMSError
from kms.server.limits import ServerLimits, configure
from kms.server.tlsfiles import TLSFile, TLSFiles, check_tls_files
from kms.settings import DECLARATIONS, Settings, load_settings

if TYPE_CHECKING:
    from kms.server.tls import ReloadableContext


def _fail(message: str) -> None:
    sys.stderr.write(f"kms: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def _load() -> Settings:
    try:
        settings = load_settings()
        settings.require_tls_files()
    except KMSError as error:
        _fail(error.public_message)
    try:
        check_tls_files(_tls_files(settings))
    except KMSError as error:
        _fail(f"{error.public_message} ({settings.source})")
    return settings


def _tls_files(settings: Settings) -> TLSFiles:
    def named(attribute: str) -> TLSFile:
        return TLSFile(DECLARATIONS[attribute].key, getattr(settings, attribute))

    return TLSFiles(
        server_cert=named("server_cert"),
        server_key=named("server_key"),
        ca_cert=named("ca_cert"),
        crl_file=None if settings.crl_file is None else named("crl_file"),
    )


_settings = _load()
# The worker (forked from this process) reads its deadlines and caps from here.
configure(ServerLimits.from_settings(_settings))


# -- authorization, audit, metrics, rate limits (kms.node) -----------------------------------
def _load_policy() -> Any:
    """The policy, and a check that the audit log takes lines, before gunicorn starts at all."""
    from kms.api.policy import load_policy
    from kms.master import check_database_file
    from kms.node import check_audit_log

    try:
        policy = load_policy(_settings.policy_file)
    except KMSError as error:
        _fail(error.public_message)
    try:
        check_audit_log(_settings)
    except KMSError as error:
        # Before `kms init` the audit log's directory is missing too: say what comes first.
        try:
            check_database_file(_settings)
        except KMSError as missing:
            _fail(missing.public_message)
        _fail(error.public_message)
    return policy


_policy = _load_policy()

# Made here, when gunicorn's master reads this file and before anything imports
# prometheus_client: the multiprocess directory must be in the environment by then.
from kms.node import prepare_runtime_directory, remove_runtime_directory  # noqa: E402

_runtime = prepare_runtime_directory()

wsgi_app = "kms.wsgi:application()"
bind = [
    f"[{_settings.host}]:{_settings.port}"
    if ":" in _settings.host
    else f"{_settings.host}:{_settings.port}"
]
# gthread, except that TLS handshakes and whole requests are read by the event loop, under
# deadlines, before a thread is used (kms.server.worker).
worker_class = "kms.server.worker.KMSWorker"
# Access-log values and error-log messages escaped: a client cannot forge a log line.
logger_class = "kms.server.logs.KMSLogger"
workers = _settings.workers
threads = _settings.threads
keepalive = 30
timeout = 60
graceful_timeout = 30
proc_name = "kms"
# gunicorn's control socket lives at one fixed path per user; kms does not use it.
control_socket_disable = True

certfile = str(_settings.server_cert)
keyfile = str(_settings.server_key)
ca_certs = str(_settings.ca_cert)
cert_reqs = ssl.CERT_REQUIRED

accesslog = "-"
errorlog = "-"
# The caller comes from the verified client certificate (kms.server.identity), not a header;
# the identity is the one its rights came from (kms.api.policy).
access_log_format = (
    '%(h)s caller="%({kms.caller}e)s" identity="%({kms.identity}e)s" '
    'request_id=%({kms.request_id}e)s "%(r)s" %(s)s %(b)s %(M)sms'
)


def ssl_context(config: Any, default_ssl_context_factory: Any) -> ssl.SSLContext:
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    if _settings.crl_file is not None:
        from kms.server.tls import check_crls

        check_crls(context, _settings.crl_file)
    return context


#: The master's TLS context, which every worker inherits (kms.server.tls).
_tls: ReloadableContext | None = None


def _build_tls_context(server: Any) -> ssl.SSLContext:
    from kms.server.tls import server_context

    # Checked first, so that a refusal names the file; server.cfg is read at each build: gunicorn
    # replaces it on SIGHUP.
    check_tls_files(_tls_files(_settings))
    return server_context(server.cfg)


def start_tls(server: Any, log: Any) -> None:
    """Build the first context in the master; any problem is kms's one line and exit 1. Public
    for a configuration built on this one (bench.floor_conf), whose master serves kms's TLS."""
    from kms.server.tls import ReloadableContext, install

    global _tls
    try:
        context = ReloadableContext(
            lambda: _build_tls_context(server), _tls_files(_settings).paths, log
        )
    except KMSError as error:
        remove_runtime_directory(_runtime)
        _fail(f"{error.public_message} ({_settings.source})")
    except (ssl.SSLError, OSError, ValueError) as error:
        remove_runtime_directory(_runtime)
        paths = ", ".join(str(path) for path in _tls_files(_settings).paths)
        _fail(f"TLS files {paths} cannot be used together: {getattr(error, 'reason', error)}")
    _tls = context
    install(context)
    _follow_tls_files(server)


def _follow_tls_files(server: Any) -> None:
    """The master checks the TLS files on each pass of its loop (at most once a second), as each
    worker does on its connections: a worker forked later starts from the newest files the master
    could use. Were the master to look only when it forks or on SIGHUP, a good change followed
    by a broken one would leave it with the files before the good one (an older CRL, say),
    which a worker started then would go back to. gunicorn has no hook for its loop, so its
    ``murder_workers`` step, called once a pass (tests/unit/test_worker_gunicorn_internals.py),
    is followed by the check."""
    murder_workers = server.murder_workers

    def murder_workers_then_check_tls_files() -> None:
        murder_workers()
        if _tls is not None:
            _tls.current()  # rebuilds if the files changed; never raises

    server.murder_workers = murder_workers_then_check_tls_files


def _refresh_tls() -> None:
    """Rebuild the master's context if its files changed: a refusal is one log line and the
    previous context stays for the workers about to be forked (never an exception here)."""
    if _tls is not None:
        _tls.reload_if_changed()


def _require_free_port(settings: Settings) -> None:
    """One line when the port is taken, instead of gunicorn's five retries a second apart."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As gunicorn binds: SO_REUSEADDR, so only a socket that listens there counts as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                _fail(
                    f"server.port: {settings.host}:{settings.port} is already in use by another "
                    f"process ({settings.source})"
                )
            _fail(f"server.host: cannot bind {settings.host}:{settings.port}: {error.strerror}")


#: The shared lock that tells `kms rekey` and `kms restore` a server is running (kms.store.serving).
_serving_lock: int | None = None


def on_starting(server: Any) -> None:
    import logging

    from kms import wsgi
    from kms.master import open_master_keyring

    # kms's own log lines (a request that failed with 500, and why) go where gunicorn's go.
    kms_log = logging.getLogger("kms")
    kms_log.handlers = list(server.log.error_log.handlers)
    kms_log.setLevel(logging.INFO)
    kms_log.propagate = False

    from kms.ratelimit import create_table

    create_table(_runtime.rate_limit_table)
    start_tls(server, kms_log)

    try:
        keyring = open_master_keyring(_settings)
    except KMSError as error:
        remove_runtime_directory(_runtime)
        _fail(error.public_message)
    # After the keystore checks, so that each of their faults is named even when the port is
    # taken too; still before gunicorn binds (and would retry five times).
    try:
        _require_free_port(_settings)
    except SystemExit:
        keyring.close()
        remove_runtime_directory(_runtime)
        raise
    from kms.node import repair_audit_log

    try:
        repair_audit_log(
            _settings, keyring
        )  # a torn last line: removed, logged, recorded in the chain
    except KMSError as error:
        keyring.close()
        remove_runtime_directory(_runtime)
        _fail(error.public_message)
    from kms.store.changes import prepare_changes_file
    from kms.store.serving import hold_serving_lock

    global _serving_lock  # held, never read, for the master's whole life
    try:
        _serving_lock = hold_serving_lock(_settings.database_url)
        # Checked here so that a side file planted by someone else stops the start in one line.
        prepare_changes_file(_settings.database_url)
    except (OSError, KMSError) as error:
        keyring.close()
        remove_runtime_directory(_runtime)
        if isinstance(error, KMSError):
            _fail(error.public_message)
        else:
            _fail(f"cannot take the serving lock beside the database: {error.strerror}")
    if keyring.open_seconds is not None:
        kms_log.info(
            "kms: root secret opened by the %s backend in %.1f ms",
            keyring.backend,
            keyring.open_seconds * 1000,
        )
    # Warned only once the keystore opened: a refused start stays one line naming its cause.
    for warning in _policy.warnings:
        kms_log.warning("%s", warning)
    if _policy.allows_everyone:
        kms_log.warning(
            "kms: no authorization.policy_file is set: every client with a certificate may do "
            "everything"
        )
    if _settings.audit_path is None:
        kms_log.warning("kms: no audit.path is set: requests are not audited")
    from kms.server.tlsfiles import expiry_warning

    expiring = expiry_warning(_tls_files(_settings).server_cert)
    if expiring is not None:
        kms_log.warning("%s", expiring)
    from kms.store.generations import journal_path

    if journal_path(_settings.state_file, _settings.database_url) is None:
        kms_log.warning(
            "kms: no kms.state_file is set: this node remembers the generations of keys in "
            "memory only, and after a restart cannot tell a rolled-back row from a current one"
        )
    wsgi.install(_settings, keyring, _policy, _runtime.rate_limit_table)


def when_ready(server: Any) -> None:
    """Announce where kms really listens (the bound sockets, not what a config once said); then
    freeze the master's heap, just before the first worker is forked."""
    import gc
    import logging

    for listener in server.LISTENERS:
        host, port = listener.sock.getsockname()[:2]
        shown = "localhost" if host in ("127.0.0.1", "::1") else host
        logging.getLogger("kms").info("kms: serving https://%s:%s", shown, port)
    # Everything imported and built so far lives as long as the process. Frozen, the garbage
    # collector never walks it again, in the master or in a worker: a worker's collections (and
    # the one at its exit, which took longer than its start) no longer write to every page it
    # shares with the master (copy-on-write), so workers share more memory and stop faster.
    gc.freeze()


def on_reload(server: Any) -> None:
    """SIGHUP: read the TLS files and the policy again for the workers gunicorn is about to start.

    An invalid policy file (a duplicate entry, a FIFO, anything ``load_policy`` refuses), or TLS
    files that cannot be used (a certificate and key that do not match in the middle of a swap), is
    refused with one log line and what is in force stays; reading the policy never blocks, and the
    master never exits on a reload.
    """
    import logging

    from kms import wsgi
    from kms.api.policy import load_policy

    # The certificates first: the workers gunicorn starts next inherit the master's context.
    _refresh_tls()
    try:
        policy = load_policy(_settings.policy_file)
    except KMSError as error:
        logging.getLogger("kms").error(
            "kms: policy reload refused, the previous policy stays in force: %s",
            error.public_message,
        )
        return
    wsgi.install_policy(policy)
    for warning in policy.warnings:
        logging.getLogger("kms").warning("%s", warning)
    logging.getLogger("kms").info("kms: policy reloaded from %s", policy.source)


def pre_fork(server: Any, worker: Any) -> None:
    from kms.server.balance import assign_slot

    _refresh_tls()  # a new worker starts with the newest usable files
    assign_slot(worker, server.WORKERS.values())


def child_exit(server: Any, worker: Any) -> None:
    from kms.node import mark_worker_dead
    from kms.server.balance import release_slot

    release_slot(worker)
    mark_worker_dead(worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    from kms import wsgi

    wsgi.close()


def on_exit(server: Any) -> None:
    from kms import wsgi

    wsgi.close()
    remove_runtime()


def remove_runtime() -> None:
    """Remove the runtime directory this module made when gunicorn's master read it (also for a
    configuration built on this one, bench.floor_conf)."""
    remove_runtime_directory(_runtime)
