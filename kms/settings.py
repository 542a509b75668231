"""Typed, frozen settings: one declaration per setting, from YAML, ``KMS_*`` variables and defaults.

Each attribute of ``Settings`` is declared once, with ``setting(default, key, field, aliases=...,
doc=...)``: its YAML key (``section.key`` or ``section.group.key``, always snake_case), its type
and range (a strict marshmallow field, as the API's schemas use), its default and a one-line
description. From the declarations come the loader below, the environment variables and the table
in docs/settings.md (``kms settings-table``; a test fails when the file is stale).

Which file: ``KMS_CONFIG=/path.yaml`` if set, else ``config/config.<KMS_ENV>.yaml`` (KMS_ENV is
``dev`` or ``prod``, default ``dev``). Relative paths resolve against the working directory.

- Environment: ``server.max_batch_items`` is overridden by ``KMS_SERVER_MAX_BATCH_ITEMS``; a
  variable wins over the file. Case and underscores after ``KMS_`` are not significant
  (``KMS_SERVER_MAXBATCHITEMS`` works) but any spelling other than the declared one is logged as
  deprecated. Any other ``KMS_*`` variable is refused, naming it and the setting's variable it
  is closest to, as an unknown YAML key is, except the few that are not kms's settings
  (``NOT_SETTINGS``: the config file's, the ``kms client`` command's, the container build's).
- Old spellings: a declaration's ``aliases`` (the camelCase keys of earlier releases, such as
  ``server.maxBatchItems``) are still read; each one used logs one warning on ``kms.settings``
  naming the old key, the new key and the file, once the settings have loaded. A file that gives
  one setting under two spellings (or two variables for one setting) is refused, naming both:
  which one was meant cannot be guessed.
- Values: surrounding whitespace of a text value is ignored. Numbers and booleans may be text (a
  variable is always text, a YAML value may be quoted). Paths may name ``${CREDENTIALS_DIRECTORY}``
  (below).
- Errors: a missing, unknown or invalid setting raises ``ConfigurationError`` with one line naming
  the key or variable as written and the file. The master passphrase itself never comes from the
  environment; only the path of its file is a setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from marshmallow import ValidationError, fields

from kms.crypto.kdf import MAX_ITERATIONS, MIN_ITERATIONS
from kms.errors import ConfigurationError
from kms.setting_kinds import (
    FilePath,
    boolean,
    dsn,
    file_path,
    integer_between,
    number_above_zero,
    one_of,
    text,
    text_matching,
)

log = logging.getLogger("kms.settings")

ENVIRONMENTS = ("dev", "prod")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: A verify without a version tries at most this many of the newest versions.
DEFAULT_VERIFY_MAX_VERSIONS = 16
#: A key's versions are bounded by design, not by its history.
DEFAULT_MAX_VERSIONS = 100_000
#: A batch request (encrypt, decrypt, datakey, rewrap, sign, verify) holds at most this many items.
DEFAULT_MAX_BATCH_ITEMS = 1000
#: Rotation by use: a version encrypts at most this many times (per key settable, never above
#: 2**32), and processes reserve encryptions from the database in blocks of this size.
DEFAULT_MAX_ENCRYPTIONS_PER_VERSION = 2**30
DEFAULT_ENCRYPTION_BLOCK = 1000
#: A worker uses a cached key row for at most this long (docs/operations.md, Consistency of
#: cached key rows); 0: no row cache.
DEFAULT_CACHE_STALENESS_MS = 1000
MAX_CACHE_STALENESS_MS = 600_000
#: Each of a worker's two key caches (rows, loaded material) holds at most about this many bytes:
#: both full, a worker stays under about 150 MB (docs/operations.md, Memory).
DEFAULT_KEY_CACHE_BYTES = 32 * 1024 * 1024

#: The one variable a path may name. systemd's ``LoadCredential=`` puts the passphrase and TLS
#: files in a private directory whose path it passes only in this variable, so a unit's config
#: must be able to say ``${CREDENTIALS_DIRECTORY}/master.key``. Nothing else is expanded (a path
#: that changes with whatever the environment holds would be a surprise, and a database URL may
#: hold a ``$`` in its password).
_PATH_VARIABLE = re.compile(r"\$\{CREDENTIALS_DIRECTORY\}|\$CREDENTIALS_DIRECTORY\b")
#: Marks the one setting without a default (``database.dsn``).
REQUIRED: Any = dataclasses.MISSING


# -- the declarations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Declaration:
    """One setting: where it is read from, what it accepts, what it means."""

    key: str
    field: fields.Field
    default: Any
    doc: str
    aliases: tuple[str, ...] = ()
    attribute: str = ""  # the Settings attribute, filled in from the class

    @property
    def variable(self) -> str:
        """``server.max_batch_items`` -> ``KMS_SERVER_MAX_BATCH_ITEMS``."""
        return "KMS_" + self.key.upper().replace(".", "_")


def setting(
    default: Any, key: str, field: fields.Field, *, aliases: tuple[str, ...] = (), doc: str
) -> Any:
    """Declare a ``Settings`` attribute as a setting (see the module's docstring)."""
    declaration = Declaration(key=key, field=field, default=default, doc=doc, aliases=aliases)
    return dataclasses.field(default=default, metadata={"setting": declaration})


@dataclass(frozen=True)
class Settings:
    """Everything kms reads from configuration. Tests build one directly."""

    # Laid out by hand, one declaration per setting: default, key, type, old spellings, meaning.
    # fmt: off
    database_dsn: str = setting(
        REQUIRED, "database.dsn", dsn(),
        doc="a SQLite file path, or a SQLAlchemy URL (`postgresql+psycopg://...`)",
    )
    # -- serving --
    host: str = setting(
        "127.0.0.1", "server.host", text(),
        doc="address to bind; localhost only unless you open it",
    )
    port: int = setting(8080, "server.port", integer_between(1, 65535), doc="TLS port")
    server_cert: Path | None = setting(
        None, "server.server_cert", file_path(), aliases=("server.serverCert",),
        doc="server certificate (PEM); required to serve",
    )
    server_key: Path | None = setting(
        None, "server.server_key", file_path(), aliases=("server.serverKey",),
        doc="the server certificate's private key (PEM); required to serve",
    )
    ca_cert: Path | None = setting(
        None, "server.ca_cert", file_path(), aliases=("server.caCert",),
        doc="CA that client certificates must chain to (PEM); required to serve",
    )
    crl_file: Path | None = setting(
        None, "server.crl_file", file_path(), aliases=("server.crlFile",),
        doc="CRLs (PEM) of the CAs in `server.ca_cert`, checked at every handshake: a client "
        "certificate revoked there, or issued by a CA without a CRL there, is refused; reloaded "
        "like the certificates (docs/security.md, Revocation)",
    )
    max_body_bytes: int = setting(
        DEFAULT_MAX_BODY_BYTES, "server.max_body_bytes", integer_between(1024, 64 * 1024**2),
        aliases=("server.maxBodyBytes",), doc="request body limit (413 above it)",
    )
    workers: int = setting(2, "server.workers", integer_between(1, 64), doc="gunicorn workers")
    threads: int = setting(4, "server.threads", integer_between(1, 64), doc="threads per worker")
    # The serving limits of kms.server (docs/security.md, Slow and hostile clients).
    handshake_timeout: int = setting(
        5, "server.handshake_timeout", integer_between(1, 300),
        aliases=("server.handshakeTimeout",),
        doc="seconds a new connection has to finish its TLS handshake",
    )
    header_timeout: int = setting(
        10, "server.header_timeout", integer_between(1, 300), aliases=("server.headerTimeout",),
        doc="seconds a request line and headers have to arrive, from their first byte",
    )
    body_timeout: int = setting(
        10, "server.body_timeout", integer_between(1, 300), aliases=("server.bodyTimeout",),
        doc="seconds a request body may stall (no byte arriving) before it is dropped",
    )
    body_min_rate: int = setting(
        1024, "server.body_min_rate", integer_between(0, 1024**3), aliases=("server.bodyMinRate",),
        doc="bytes per second a body must average after its first 5 seconds (`0`: no floor)",
    )
    max_connections: int = setting(
        1000, "server.max_connections", integer_between(16, 100_000),
        aliases=("server.maxConnections",),
        doc="connections per worker; at the cap a new one takes the place of a connection still "
        "in its handshake or that has sent nothing yet, or is refused",
    )
    max_connections_per_identity: int = setting(
        100, "server.max_connections_per_identity", integer_between(1, 100_000),
        aliases=("server.maxConnectionsPerIdentity",),
        doc="connections one client certificate's identity may hold per worker; more are "
        "answered 429 and closed",
    )
    write_timeout: int = setting(
        10, "server.write_timeout", integer_between(1, 300), aliases=("server.writeTimeout",),
        doc="seconds a response may wait for its client to read any of it before the "
        "connection is closed",
    )
    max_batch_items: int = setting(
        DEFAULT_MAX_BATCH_ITEMS, "server.max_batch_items", integer_between(1, 100_000),
        aliases=("server.maxBatchItems",), doc="items a batch request may hold; more is 400",
    )
    tls_context_cache: bool = setting(
        True, "server.tls_context_cache", boolean(), aliases=("server.tlsContextCache",),
        doc="a diagnostic: `false` builds a TLS context per connection, as gunicorn's own workers "
        "do, so `make bench` can measure what the cached one saves; never in production",
    )
    # -- keys and their caches --
    master_passphrase_file: Path | None = setting(
        # Absolute, not resolved: the file is opened as configured (O_NOFOLLOW), so a symlink in
        # its place must reach the reader to be refused, not be replaced by its target.
        None, "kms.master_passphrase_file", file_path(resolve=False),
        doc="passphrase file (a regular file, not a symlink; mode 0400 or 0600); unset: "
        "prompt on the terminal",
    )
    master_key_backend: str = setting(
        "passphrase", "kms.master_key.backend", one_of("passphrase", "pkcs11"),
        doc="what seals the keystore's root secret: `passphrase` (PBKDF2 of the passphrase "
        "file) or `pkcs11` (an AES key in an HSM; docs/operations.md, HSM)",
    )
    pkcs11_module: Path | None = setting(
        None, "kms.master_key.module", file_path(),
        doc="`pkcs11`: the PKCS#11 library (e.g. `/usr/lib/softhsm/libsofthsm2.so`)",
    )
    pkcs11_token_label: str | None = setting(
        None, "kms.master_key.token_label", text(),
        doc="`pkcs11`: the label of the token that holds the key",
    )
    pkcs11_key_label: str | None = setting(
        None, "kms.master_key.key_label", text(),
        doc="`pkcs11`: the label of the AES-256 key (sensitive, not extractable) in that token",
    )
    pkcs11_pin_file: Path | None = setting(
        # Opened as configured, like the passphrase file.
        None, "kms.master_key.pin_file", file_path(resolve=False),
        doc="`pkcs11`: the file holding the token's user PIN (a regular file, not a symlink; "
        "mode 0400 or 0600)",
    )
    kdf_iterations: int = setting(
        MIN_ITERATIONS, "kms.kdf_iterations", integer_between(MIN_ITERATIONS, MAX_ITERATIONS),
        doc="PBKDF2 iterations for `kms init`",
    )
    state_file: Path | None = setting(
        None, "kms.state_file", file_path(),
        doc="this node's journal of the newest generation of each key (anti-rollback; "
        "docs/security.md); unset: `<database>.generations` beside a SQLite database, memory "
        "only for PostgreSQL (warned at start)",
    )
    key_cache_size: int = setting(
        4096, "kms.key_cache_size", integer_between(0, 1_000_000),
        doc="unwrapped key versions, and key rows, each worker caches (each cache at most this "
        "many)",
    )
    key_cache_bytes: int = setting(
        DEFAULT_KEY_CACHE_BYTES, "kms.key_cache_bytes", integer_between(64 * 1024, 64 * 1024**3),
        aliases=("kms.keyCacheBytes",),
        doc="each of those two caches also holds at most about this many bytes",
    )
    cache_staleness_ms: int = setting(
        DEFAULT_CACHE_STALENESS_MS, "kms.cache_staleness_ms",
        integer_between(0, MAX_CACHE_STALENESS_MS), aliases=("kms.cacheStalenessMs",),
        doc="a worker uses a cached key row for at most this many milliseconds (`0`: read the "
        "row on every request)",
    )
    verify_max_versions: int = setting(
        DEFAULT_VERIFY_MAX_VERSIONS, "kms.verify_max_versions", integer_between(1, 1000),
        aliases=("kms.verifyMaxVersions",),
        doc="a verify without a version tries at most this many of a key's newest versions",
    )
    list_deadline_ms: int = setting(
        5000, "kms.list_deadline_ms", integer_between(10, 20_000),
        doc="a key listing still running after this many milliseconds is stopped with 503 (it "
        "reads at most 1,000 key rows per request; this bounds the database's own work)",
    )
    max_versions: int = setting(
        DEFAULT_MAX_VERSIONS, "kms.max_versions", integer_between(1, 2**31 - 1),
        aliases=("kms.maxVersions",), doc="versions a key may have; rotating past it is 409",
    )
    deletion_min_pending_days: int = setting(
        0, "kms.deletion.min_pending_days", integer_between(0, 30),
        doc="above 0, `DELETE` must schedule at least this many days ahead "
        "(`?pending_days=N`) and `recreate` is refused",
    )
    max_encryptions_per_version: int = setting(
        DEFAULT_MAX_ENCRYPTIONS_PER_VERSION, "kms.max_encryptions_per_version",
        integer_between(1, 2**32), aliases=("kms.maxEncryptionsPerVersion",),
        doc="encryptions per key version, for keys that set no limit of their own",
    )
    encryption_block: int = setting(
        DEFAULT_ENCRYPTION_BLOCK, "kms.encryption_block", integer_between(1, 1_000_000),
        aliases=("kms.encryptionBlock",),
        doc="encryptions a worker reserves from the database at a time (at most 1/8 of a "
        "version's limit)",
    )
    # -- who may do what, and the record of who did (docs/configuration.md, The policy file;
    # docs/operations.md, Audit log) --
    policy_file: Path | None = setting(
        None, "authorization.policy_file", file_path(),
        doc="YAML policy: who may do what; unset: every client may do everything",
    )
    audit_path: Path | None = setting(
        None, "audit.path", file_path(),
        doc="audit log file (JSON lines, hash-chained, a regular file); unset: no audit "
        "(warned at start)",
    )
    audit_summary_seconds: int = setting(
        60, "audit.summary_seconds", integer_between(1, 3600),
        doc="requests refused before any work (401, 403, 404, 405, 429) and health checks are "
        "counted, and written as one summary line per identity per worker this often",
    )
    # -- monitoring (docs/operations.md, Health and metrics) --
    metrics_max_key_series: int = setting(
        1000, "metrics.max_key_series", integer_between(0, 100_000),
        doc="key versions `/metrics` reports use for (within the caller's scope, in key order); "
        "past it `kms_key_version_series_truncated` is 1",
    )
    rate_limit_rate: float | None = setting(
        None, "rate_limit.rate", number_above_zero(1_000_000),
        doc="requests per second per identity (a token bucket); set with `rate_limit.burst`, "
        "or neither for no limit",
    )
    rate_limit_burst: int | None = setting(
        None, "rate_limit.burst", integer_between(1, 1_000_000),
        doc="the bucket's size: requests an identity may make at once",
    )
    # -- the AWS KMS compatible endpoint (docs/aws-kms.md) --
    aws_region: str = setting(
        "us-east-1", "aws.region",
        text_matching("[a-z]{2}(-[a-z0-9]+){1,3}", "an AWS region name", "eu-central-1"),
        doc="the region in the key ARNs of the AWS KMS endpoint "
        "(`arn:aws:kms:<region>:<account>:key/<id>`)",
    )
    aws_account_id: str = setting(
        "000000000000", "aws.account_id",
        text_matching("[0-9]{12}", "12 decimal digits, quoted in YAML", "123456789012"),
        doc="the account in the key ARNs of the AWS KMS endpoint",
    )
    # fmt: on
    #: For tests only, and deliberately not a setting: no YAML key or KMS_* variable reaches it,
    #: so a deployment always has the production floor (600,000 PBKDF2 iterations) on write and
    #: on read. Test code that builds Settings itself lowers it to derive keys quickly.
    insecure_test_kdf_floor: int | None = None
    source: str = dataclasses.field(default="<settings object>", compare=False)

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def database_url(self) -> str:
        return database_url(self.database_dsn)

    @property
    def kdf_floor(self) -> int:
        """The fewest PBKDF2 iterations kms accepts, in the database or for ``kms init``."""
        return (
            MIN_ITERATIONS if self.insecure_test_kdf_floor is None else self.insecure_test_kdf_floor
        )

    def require_tls_files(self) -> None:
        """Raise unless the three TLS files (and the CRL file, if set) are configured and
        readable."""
        for attribute in ("server_cert", "server_key", "ca_cert", "crl_file"):
            name, path = DECLARATIONS[attribute].key, getattr(self, attribute)
            if path is None and attribute == "crl_file":
                continue
            if path is None:
                raise ConfigurationError(f"{name} is not set ({self.source})")
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ConfigurationError(f"{name}: cannot read {path} ({self.source})")


#: attribute -> declaration, in the order of the class.
DECLARATIONS: dict[str, Declaration] = {
    item.name: dataclasses.replace(item.metadata["setting"], attribute=item.name)
    for item in dataclasses.fields(Settings)
    if "setting" in item.metadata
}
_BY_KEY = {spelling: d for d in DECLARATIONS.values() for spelling in (d.key, *d.aliases)}
#: ``section.group`` prefixes (``kms.deletion``), whose YAML value is a mapping of more keys.
_GROUPS = {spelling.rsplit(".", 1)[0] for spelling in _BY_KEY if spelling.count(".") == 2}


def _loose(variable: str) -> str:
    # Case and underscores after KMS_ do not matter: KMS_RATE_LIMIT_RATE finds rate_limit.rate.
    return "KMS_" + variable[4:].upper().replace("_", "")


_BY_VARIABLE = {_loose(d.variable): d for d in DECLARATIONS.values()}
#: ``KMS_*`` variables that are not settings, and so are not refused: which config file
#: (``KMS_CONFIG``, ``KMS_ENV``), the ``kms client`` command's options (kms.client.cli) and the
#: container's user and group, image name and published port (deploy/Dockerfile,
#: deploy/docker-compose.yml: a shell that runs compose may export them). Any other ``KMS_*``
#: variable kms does not know is a typo, refused like an unknown YAML key.
NOT_SETTINGS = frozenset(
    {
        "KMS_CONFIG",
        "KMS_ENV",
        "KMS_CLIENT_URL",
        "KMS_CLIENT_CERT",
        "KMS_CLIENT_KEY",
        "KMS_CLIENT_CA",
        "KMS_UID",
        "KMS_GID",
        "KMS_IMAGE",
        "KMS_PUBLISHED_PORT",
    }
)


# -- loading ------------------------------------------------------------------------------------


def database_url(dsn: str) -> str:
    """Accept a SQLAlchemy URL, or a plain file path (the seed's form) for SQLite."""
    if "://" in dsn:
        return dsn
    return "sqlite:///" + str(Path(dsn).expanduser().resolve())


def config_path(environ: Mapping[str, str]) -> Path:
    explicit = environ.get("KMS_CONFIG")
    if explicit:
        return Path(explicit)
    env = environ.get("KMS_ENV", "dev")
    if env not in ENVIRONMENTS:
        raise ConfigurationError(f"KMS_ENV must be one of {', '.join(ENVIRONMENTS)}, not {env!r}")
    return Path("config") / f"config.{env}.yaml"


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    path = config_path(environ) if path is None else path
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"config file {path} is not valid YAML{_where(exc)}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigurationError(f"config file {path} must be a mapping of sections")
    return settings_from_mapping(document, environ, source=str(path))


#: What PyYAML quotes of the file in its words (an undefined alias's name, say), unless a token
#: name (``'<stream end>'``) or a character or two (``','``, ``'\\t'``).
_QUOTED_FILE_TEXT = re.compile(r"'(?!<[a-z ]+>')[^'\s]{3,}'")


def _where(error: yaml.YAMLError) -> str:
    """``: line 4, column 7: mapping values are not allowed here`` from PyYAML's marks, or
    nothing. The position and PyYAML's words only: longer text of the file it quotes (which may
    be part of a database password) is left out."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if mark is None:
        return ""
    where = f": line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(error, "problem", None) or getattr(error, "context", None)
    if not problem:
        return where
    words = _QUOTED_FILE_TEXT.sub("'...'", " ".join(str(problem).split()))
    return f"{where}: {words}"


def settings_from_mapping(
    document: Mapping[str, Any], environ: Mapping[str, str], source: str
) -> Settings:
    """The settings of a parsed YAML ``document`` with ``environ``'s overrides; ``source`` names
    the file in messages."""
    deprecated: list[str] = []
    from_file: dict[str, tuple[str, Any]] = {}  # attribute -> (the key as written, its value)
    for written, value in _entries(document, source):
        declaration = _BY_KEY.get(written)
        if declaration is None:
            raise ConfigurationError(f"{written}: unknown setting ({source})")
        _take(from_file, declaration, written, value, declaration.key, source)
        if written != declaration.key:
            deprecated.append(f"kms: {source}: {written} is deprecated, write {declaration.key}")
    from_environment: dict[str, tuple[str, Any]] = {}
    for name, value in environ.items():
        declaration = _variable(name)
        if declaration is not None:
            _take(from_environment, declaration, name, value, declaration.variable, "environment")
            if name != declaration.variable:
                deprecated.append(f"kms: {name} is deprecated, set {declaration.variable}")
    values = {
        attribute: _load(DECLARATIONS[attribute], written, value, environ, source)
        for attribute, (written, value) in (from_file | from_environment).items()
    }
    if "database_dsn" not in values:
        raise ConfigurationError(f"{DECLARATIONS['database_dsn'].key} is not set ({source})")
    if ("rate_limit_rate" in values) != ("rate_limit_burst" in values):
        raise ConfigurationError(
            f"rate_limit: set both rate and burst, or neither to switch limits off ({source})"
        )
    for line in deprecated:  # after the checks: a refused start stays one line naming its cause
        log.warning("%s", line)
    return Settings(**values, source=source)


def _entries(
    document: Mapping[str, Any], source: str, prefix: str = ""
) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of a document of sections, flattening groups (``kms.deletion``)."""
    for name, value in document.items():
        key = f"{prefix}{name}"
        if not prefix and value is None:
            continue  # an empty section
        if not prefix or key in _GROUPS:
            if not isinstance(value, dict):
                raise ConfigurationError(f"{key}: must be a mapping ({source})")
            yield from _entries(value, source, prefix=f"{key}.")
        else:
            yield key, value


def _variable(name: str) -> Declaration | None:
    """The declaration a ``KMS_*`` variable overrides; None for a variable that is no setting."""
    if not name.startswith("KMS_") or name in NOT_SETTINGS:
        return None
    if "PASSPHRASE" in name.upper() and not name.upper().endswith("FILE"):
        raise ConfigurationError(
            f"{name}: the master passphrase is never read from the environment"
        )
    if name.upper().endswith("_PIN"):
        raise ConfigurationError(f"{name}: the HSM's PIN is never read from the environment")
    declaration = _BY_VARIABLE.get(_loose(name))
    if declaration is None:
        raise ConfigurationError(f"{name}: unknown setting{_closest_variable(name)} (environment)")
    return declaration


def _closest_variable(name: str) -> str:
    """``; did you mean KMS_SERVER_PORT?`` for the declared variable closest to ``name``."""
    known = [d.variable for d in DECLARATIONS.values()]
    close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def _take(
    taken: dict[str, tuple[str, Any]],
    declaration: Declaration,
    written: str,
    value: Any,
    spelling: str,
    where: str,
) -> None:
    """Record ``written: value``, unless the setting was already given under another spelling."""
    earlier = taken.get(declaration.attribute)
    if earlier is not None:
        first, second = sorted((earlier[0], written))
        raise ConfigurationError(
            f"{first} and {second} both set {declaration.key}: keep only {spelling} ({where})"
        )
    taken[declaration.attribute] = (written, value)


def _load(
    declaration: Declaration, written: str, value: Any, environ: Mapping[str, str], source: str
) -> Any:
    if isinstance(value, str):
        value = value.strip()
        if isinstance(declaration.field, FilePath):
            value = expand_path_variables(written, value, environ, source)
    try:
        return declaration.field.deserialize(value)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, list) else [str(exc.messages)]
        raise ConfigurationError(f"{written}: {'; '.join(messages)} ({source})") from None


def expand_path_variables(name: str, value: str, environ: Mapping[str, str], source: str) -> str:
    """``${CREDENTIALS_DIRECTORY}/server.key`` -> the file systemd's LoadCredential= made."""
    if "://" in value or _PATH_VARIABLE.search(value) is None:
        return value  # a database URL, or a plain path
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigurationError(
            f"{name}: names ${{CREDENTIALS_DIRECTORY}} but CREDENTIALS_DIRECTORY is not set; run "
            f"kms under systemd with LoadCredential= or set it to the directory holding the files "
            f"({source})"
        )
    return _PATH_VARIABLE.sub(lambda _match: directory, value)


# -- the documentation --------------------------------------------------------------------------


def settings_table() -> str:
    """docs/settings.md: every setting, its variable, default and range, then the old spellings."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from kms/settings.py by `make settings-doc`; do not edit. -->",
        "",
        "kms reads a YAML file: `KMS_CONFIG` names it, else `KMS_ENV` (`dev`, the default, or",
        "`prod`) picks `config/config.<env>.yaml`. The key `server.port` is `port:` in the file's",
        "`server:` mapping (`kms.deletion.min_pending_days`: `min_pending_days:` in `deletion:` in",
        "`kms:`). Each setting's environment variable overrides the file. Relative paths resolve",
        "against the working directory, and a path may name `${CREDENTIALS_DIRECTORY}` (systemd's",
        "`LoadCredential=`). A missing or invalid setting stops kms at startup with one line",
        "naming it and the file.",
        "",
        "| Key | Environment variable | Default | Accepted | Meaning |",
        "|---|---|---|---|---|",
    ]
    for d in DECLARATIONS.values():
        default = "required" if d.default is REQUIRED else _shown(d.default)
        accepts = d.field.metadata["accepts"]
        lines.append(f"| `{d.key}` | `{d.variable}` | {default} | {accepts} | {d.doc} |")
    lines += [
        "",
        "Earlier spellings are still read, with a warning in the log naming the file; a file that",
        "gives a setting under both spellings is refused.",
        "",
        "| Deprecated key | Write instead |",
        "|---|---|",
    ]
    lines += [f"| `{a}` | `{d.key}` |" for d in DECLARATIONS.values() for a in d.aliases]
    return "\n".join(lines) + "\n"


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str) and yaml.safe_load(value) != value:
        return f'`"{value}"`'  # YAML would read it as another type: quoted, as a file needs it
    return f"`{value}`"
