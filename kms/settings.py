"""Typed, frozen settings: YAML in the seed's format, plus ``KMS_<SECTION>_<KEY>`` overrides.

Which file: ``KMS_CONFIG=/path.yaml`` if set, else ``config/config.<KMS_ENV>.yaml`` (KMS_ENV is
``dev`` or ``prod``, default ``dev``). Relative paths resolve against the working directory. A
missing or wrong setting raises ``ConfigurationError`` with one line naming it. The master
passphrase itself never comes from the environment; only the path of its file is a setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from kms.crypto.kdf import MAX_ITERATIONS, MIN_ITERATIONS
from kms.errors import ConfigurationError

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
#: A worker uses a cached key row for at most this long (README, Consistency); 0: no row cache.
DEFAULT_CACHE_STALENESS_MS = 1000
MAX_CACHE_STALENESS_MS = 600_000
#: Each of a worker's two key caches (rows, loaded material) holds at most about this many bytes:
#: both full, a worker stays under about 150 MB (README, Consistency of cached key rows).
DEFAULT_KEY_CACHE_BYTES = 32 * 1024 * 1024

# (section, yaml key) -> attribute path; the env override is KMS_<SECTION>_<KEY>, matched
# case-insensitively with underscores ignored (KMS_SERVER_SERVERCERT == KMS_SERVER_SERVER_CERT).
_KEYS: dict[tuple[str, str], str] = {
    ("server", "host"): "host",
    ("server", "port"): "port",
    ("server", "serverCert"): "server_cert",
    ("server", "serverKey"): "server_key",
    ("server", "caCert"): "ca_cert",
    ("server", "maxBodyBytes"): "max_body_bytes",
    ("server", "workers"): "workers",
    ("server", "threads"): "threads",
    # The serving limits of kms.server (issue 6): deadlines in seconds, connections per worker.
    ("server", "handshakeTimeout"): "handshake_timeout",
    ("server", "headerTimeout"): "header_timeout",
    ("server", "bodyTimeout"): "body_timeout",
    ("server", "bodyMinRate"): "body_min_rate",
    ("server", "maxConnections"): "max_connections",
    ("server", "maxBatchItems"): "max_batch_items",
    # A diagnostic for `make bench`, not a tuning knob: false builds a new TLS context for every
    # connection, as gunicorn's own workers do, so the cost of doing so can be measured.
    ("server", "tlsContextCache"): "tls_context_cache",
    ("kms", "master_passphrase_file"): "master_passphrase_file",
    ("kms", "kdf_iterations"): "kdf_iterations",
    ("kms", "key_cache_size"): "key_cache_size",
    ("kms", "keyCacheBytes"): "key_cache_bytes",
    ("kms", "cacheStalenessMs"): "cache_staleness_ms",
    ("kms", "verifyMaxVersions"): "verify_max_versions",
    ("kms", "maxVersions"): "max_versions",
    ("kms", "deletion.min_pending_days"): "deletion_min_pending_days",
    ("kms", "maxEncryptionsPerVersion"): "max_encryptions_per_version",
    ("kms", "encryptionBlock"): "encryption_block",
    ("database", "dsn"): "database_dsn",
    ("authorization", "policy_file"): "policy_file",
    ("audit", "path"): "audit_path",
    ("rate_limit", "rate"): "rate_limit_rate",
    ("rate_limit", "burst"): "rate_limit_burst",
}
_SECTIONS = {section for section, _ in _KEYS}
_ENV_NAME = {"KMS_" + f"{s}{k}".upper().replace("_", "").replace(".", ""): (s, k) for s, k in _KEYS}
#: Most settings are ``section.key``; these sections also hold groups (``kms.deletion.*``),
#: flattened to ``group.key`` when read.
_GROUPS = {("kms", "deletion")}
#: Settings that name files: ``${CREDENTIALS_DIRECTORY}`` in them is expanded (see below).
_PATH_ATTRIBUTES = frozenset(
    {
        "server_cert",
        "server_key",
        "ca_cert",
        "master_passphrase_file",
        "database_dsn",
        "policy_file",
        "audit_path",
    }
)
#: The one variable a path may name. systemd's ``LoadCredential=`` puts the passphrase and TLS
#: files in a private directory whose path it passes only in this variable, so a unit's config
#: must be able to say ``${CREDENTIALS_DIRECTORY}/master.key``. Nothing else is expanded (a path
#: that changes with whatever the environment holds would be a surprise, and a database URL may
#: hold a ``$`` in its password).
_PATH_VARIABLE = re.compile(r"\$\{CREDENTIALS_DIRECTORY\}|\$CREDENTIALS_DIRECTORY\b")


@dataclass(frozen=True)
class Settings:
    """Everything kms reads from configuration. Tests build one directly."""

    database_dsn: str
    master_passphrase_file: Path | None = None
    kdf_iterations: int = MIN_ITERATIONS
    key_cache_size: int = 4096
    key_cache_bytes: int = DEFAULT_KEY_CACHE_BYTES
    cache_staleness_ms: int = DEFAULT_CACHE_STALENESS_MS
    verify_max_versions: int = DEFAULT_VERIFY_MAX_VERSIONS
    max_versions: int = DEFAULT_MAX_VERSIONS
    #: A DELETE must schedule the deletion at least this many days ahead; 0: immediate allowed.
    deletion_min_pending_days: int = 0
    max_encryptions_per_version: int = DEFAULT_MAX_ENCRYPTIONS_PER_VERSION
    encryption_block: int = DEFAULT_ENCRYPTION_BLOCK
    host: str = "127.0.0.1"
    port: int = 8080
    server_cert: Path | None = None
    server_key: Path | None = None
    ca_cert: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    workers: int = 2
    threads: int = 4
    # -- the serving limits (README "Slow and hostile clients") --
    handshake_timeout: int = 5
    header_timeout: int = 10
    body_timeout: int = 10
    body_min_rate: int = 1024
    max_connections: int = 1000
    max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS
    #: False only to measure what the per-worker TLS context saves (bench/, README Performance).
    tls_context_cache: bool = True
    # -- who may do what, and the record of who did (README "Security") --
    policy_file: Path | None = None  # absent: every authenticated caller may do everything
    audit_path: Path | None = None  # absent: no audit log (a warning at start)
    rate_limit_rate: float | None = None  # requests per second per identity; absent: no limit
    rate_limit_burst: int | None = None
    #: For tests only, and deliberately not a setting: no YAML key or KMS_* variable reaches it,
    #: so a deployment always has the production floor (600,000 PBKDF2 iterations) on write and
    #: on read. Test code that builds Settings itself lowers it to derive keys quickly.
    insecure_test_kdf_floor: int | None = None
    source: str = field(default="<settings object>", compare=False)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

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
        """Raise unless the three TLS files are configured and readable."""
        for name, path in (
            ("server.serverCert", self.server_cert),
            ("server.serverKey", self.server_key),
            ("server.caCert", self.ca_cert),
        ):
            if path is None:
                raise ConfigurationError(f"{name} is not set ({self.source})")
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ConfigurationError(f"{name}: cannot read {path} ({self.source})")


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
        raise ConfigurationError(f"config file {path} is not valid YAML") from exc
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigurationError(f"config file {path} must be a mapping of sections")
    return settings_from_mapping(document, environ, source=str(path))


def settings_from_mapping(
    document: Mapping[str, Any], environ: Mapping[str, str], source: str
) -> Settings:
    raw: dict[str, Any] = {}
    for section, values in document.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigurationError(f"{section}: must be a mapping ({source})")
        for key, value in _flatten(section, values, source):
            attribute = _KEYS.get((section, key))
            if attribute is None:
                raise ConfigurationError(f"{section}.{key}: unknown setting ({source})")
            raw[attribute] = (f"{section}.{key}", value)
    for name, value in environ.items():
        if not name.startswith("KMS_") or name in ("KMS_ENV", "KMS_CONFIG"):
            continue
        if "PASSPHRASE" in name and not name.endswith("FILE"):
            raise ConfigurationError(
                f"{name}: the master passphrase is never read from the environment"
            )
        section_key = _ENV_NAME.get(_normalise_env_name(name))
        if section_key is None:
            if name.split("_")[1].lower() in _SECTIONS or name.startswith("KMS_RATE_LIMIT_"):
                raise ConfigurationError(f"{name}: unknown setting")
            continue
        raw[_KEYS[section_key]] = (name, value)
    for attribute, (name, value) in raw.items():
        if attribute in _PATH_ATTRIBUTES and isinstance(value, str):
            raw[attribute] = (name, expand_path_variables(name, value, environ, source))
    return _build(raw, source)


def _flatten(section: str, values: dict[str, Any], source: str) -> list[tuple[str, Any]]:
    flat: list[tuple[str, Any]] = []
    for key, value in values.items():
        if (section, key) in _GROUPS:
            if not isinstance(value, dict):
                raise ConfigurationError(f"{section}.{key}: must be a mapping ({source})")
            flat += [(f"{key}.{inner}", inner_value) for inner, inner_value in value.items()]
        else:
            flat.append((key, value))
    return flat


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


def _normalise_env_name(name: str) -> str:
    # Underscores do not matter anywhere after KMS_, so KMS_RATE_LIMIT_RATE finds rate_limit.rate.
    return "KMS_" + name[4:].upper().replace("_", "")


def _build(raw: dict[str, tuple[str, Any]], source: str) -> Settings:
    values: dict[str, Any] = {"source": source}
    converters = {
        "host": _string,
        "port": _integer_between(1, 65535),
        "server_cert": _path,
        "server_key": _path,
        "ca_cert": _path,
        "max_body_bytes": _integer_between(1024, 64 * 1024 * 1024),
        "workers": _integer_between(1, 64),
        "threads": _integer_between(1, 64),
        "handshake_timeout": _integer_between(1, 300),
        "header_timeout": _integer_between(1, 300),
        "body_timeout": _integer_between(1, 300),
        "body_min_rate": _integer_between(0, 1024 * 1024 * 1024),
        "max_connections": _integer_between(16, 100_000),
        "max_batch_items": _integer_between(1, 100_000),
        "tls_context_cache": _boolean,
        "master_passphrase_file": _unresolved_path,
        "kdf_iterations": _integer_between(MIN_ITERATIONS, MAX_ITERATIONS),
        "key_cache_size": _integer_between(0, 1_000_000),
        "key_cache_bytes": _integer_between(64 * 1024, 64 * 1024**3),
        "cache_staleness_ms": _integer_between(0, MAX_CACHE_STALENESS_MS),
        "verify_max_versions": _integer_between(1, 1000),
        "max_versions": _integer_between(1, 2**31 - 1),
        "deletion_min_pending_days": _integer_between(0, 30),
        "max_encryptions_per_version": _integer_between(1, 2**32),
        "encryption_block": _integer_between(1, 1_000_000),
        "database_dsn": _dsn,
        "policy_file": _path,
        "audit_path": _path,
        "rate_limit_rate": _positive_number,
        "rate_limit_burst": _integer_between(1, 1_000_000),
    }
    for attribute, (name, value) in raw.items():
        try:
            values[attribute] = converters[attribute](value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{name}: {exc} ({source})") from None
    if "database_dsn" not in values:
        raise ConfigurationError(f"database.dsn is not set ({source})")
    if ("rate_limit_rate" in values) != ("rate_limit_burst" in values):
        raise ConfigurationError(
            f"rate_limit: set both rate and burst, or neither to switch limits off ({source})"
        )
    return Settings(**values)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _boolean(value: Any) -> bool:
    # YAML gives a bool; a KMS_* override gives text, of which only the two spellings count.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("must be true or false")


def _path(value: Any) -> Path:
    return Path(_string(value)).expanduser().resolve()


def _unresolved_path(value: Any) -> Path:
    """Absolute, but not resolved: a secret file is opened as configured (``O_NOFOLLOW``), so a
    symlink in its place must reach the reader to be refused, not be replaced by its target."""
    path = Path(_string(value)).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def _dsn(value: Any) -> str:
    dsn = _string(value)
    # A plain file path resolves now, like the other paths: a later chdir must not move it.
    return dsn if "://" in dsn else str(_path(dsn))


def _positive_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError("must be a number") from None
    if not isinstance(value, int | float) or not 0 < value <= 1_000_000 or value != value:
        raise ValueError("must be a number above 0 and at most 1000000")
    return float(value)


_DECIMAL = re.compile(r"[0-9]{1,12}")


def _integer_between(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            value = int(value)
        if not isinstance(value, int):
            raise ValueError("must be an integer")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return convert
