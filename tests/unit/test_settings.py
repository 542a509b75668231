"""load_settings: YAML files in the seed's format plus KMS_* overrides, all from tmp_path.

Every test passes ``environ=`` explicitly: the developer's real environment must never leak in.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from marshmallow import fields

from kms import settings as settings_module
from kms.crypto.kdf import MIN_ITERATIONS
from kms.errors import ConfigurationError
from kms.fields import StrictBoolean, StrictInteger
from kms.settings import (
    DECLARATIONS,
    NOT_SETTINGS,
    Declaration,
    Settings,
    load_settings,
    settings_from_mapping,
)
from tests.helpers.config import write_config

SEED: dict[str, dict[str, Any]] = {
    "server": {
        "port": 8443,
        "server_cert": "certs/server.crt",
        "server_key": "certs/server.key",
        "ca_cert": "certs/ca.pem",
    },
    "kms": {"master_passphrase_file": "secrets/master.key"},
    "database": {"dsn": "data/kms.db"},
}


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_seed_format_loads(in_tmp: Path) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED)
    settings = load_settings(path, environ={})
    assert settings.port == 8443
    assert settings.server_cert == in_tmp / "certs" / "server.crt"
    assert settings.server_key == in_tmp / "certs" / "server.key"
    assert settings.ca_cert == in_tmp / "certs" / "ca.pem"
    assert settings.master_passphrase_file == in_tmp / "secrets" / "master.key"
    assert settings.kdf_iterations == MIN_ITERATIONS
    assert settings.source == str(path)


def test_relative_paths_resolve_against_the_working_directory(
    in_tmp: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(write_config(in_tmp / "kms.yaml", SEED), environ={})
    assert settings.master_passphrase_file is not None
    assert settings.master_passphrase_file.is_absolute()
    assert settings.database_url == f"sqlite:///{in_tmp / 'data' / 'kms.db'}"
    # Resolved when loaded: a later chdir (a daemonising server does one) must not move them.
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert settings.master_passphrase_file == in_tmp / "secrets" / "master.key"
    assert settings.database_url == f"sqlite:///{in_tmp / 'data' / 'kms.db'}"


def test_absolute_paths_and_urls_are_kept(in_tmp: Path) -> None:
    path = write_config(
        in_tmp / "kms.yaml",
        SEED,
        database={"dsn": "postgresql+psycopg://kms@db/kms"},
        kms={"master_passphrase_file": "/run/secrets/master"},
    )
    settings = load_settings(path, environ={})
    assert settings.database_url == "postgresql+psycopg://kms@db/kms"
    assert settings.master_passphrase_file == Path("/run/secrets/master")


# -- which file -------------------------------------------------------------------------------


@pytest.fixture
def environments(in_tmp: Path) -> Path:
    write_config(in_tmp / "config" / "config.dev.yaml", SEED, server={"port": 8080})
    write_config(in_tmp / "config" / "config.prod.yaml", SEED, server={"port": 9443})
    write_config(in_tmp / "elsewhere" / "mine.yaml", SEED, server={"port": 7000})
    return in_tmp


def test_kms_env_defaults_to_dev(environments: Path) -> None:
    settings = load_settings(environ={})
    assert settings.port == 8080
    assert settings.source == str(Path("config") / "config.dev.yaml")


def test_kms_env_selects_the_file(environments: Path) -> None:
    assert load_settings(environ={"KMS_ENV": "dev"}).port == 8080
    assert load_settings(environ={"KMS_ENV": "prod"}).port == 9443


@pytest.mark.parametrize("env", ["test", "Prod", "", "../prod"])
def test_an_unknown_kms_env_is_refused(environments: Path, env: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(environ={"KMS_ENV": env})
    assert "KMS_ENV" in str(excinfo.value)


def test_kms_config_names_the_file_and_wins_over_kms_env(environments: Path) -> None:
    path = str(environments / "elsewhere" / "mine.yaml")
    assert load_settings(environ={"KMS_CONFIG": path}).port == 7000
    assert load_settings(environ={"KMS_CONFIG": path, "KMS_ENV": "prod"}).port == 7000
    relative = load_settings(environ={"KMS_CONFIG": "elsewhere/mine.yaml"})
    assert relative.port == 7000


def test_an_explicit_path_wins_over_the_environment(environments: Path) -> None:
    path = environments / "config" / "config.prod.yaml"
    assert load_settings(path, environ={"KMS_CONFIG": "nope.yaml"}).port == 9443


def test_a_missing_file_names_the_file(in_tmp: Path) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(environ={"KMS_CONFIG": "absent.yaml"})
    assert "absent.yaml" in str(excinfo.value)


@pytest.mark.parametrize(
    "text", ["server: [unclosed", "- a\n- list\n", "just a string"], ids=["yaml", "list", "scalar"]
)
def test_a_file_that_is_not_a_mapping_is_refused(in_tmp: Path, text: str) -> None:
    (in_tmp / "bad.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError):
        load_settings(in_tmp / "bad.yaml", environ={})


# -- environment overrides ----------------------------------------------------------------------


def test_kms_database_dsn_overrides_the_file(in_tmp: Path) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED)
    dsn = "postgresql+psycopg://kms@db/kms"
    settings = load_settings(path, environ={"KMS_DATABASE_DSN": dsn})
    assert settings.database_dsn == dsn
    assert settings.database_url == dsn


def test_kms_server_port_overrides_the_file(in_tmp: Path) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED)
    assert load_settings(path, environ={"KMS_SERVER_PORT": "9999"}).port == 9999
    assert load_settings(path, environ={"KMS_SERVER_PORT": " 9999 "}).port == 9999


def test_overrides_are_named_after_the_snake_case_keys(in_tmp: Path) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED)
    environ = {
        "KMS_SERVER_SERVER_CERT": "/etc/kms/cert.pem",
        "KMS_KMS_MASTER_PASSPHRASE_FILE": "/etc/kms/master.key",
    }
    settings = load_settings(path, environ=environ)
    assert settings.server_cert == Path("/etc/kms/cert.pem")
    assert settings.master_passphrase_file == Path("/etc/kms/master.key")


def test_other_environment_variables_are_ignored(in_tmp: Path) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED)
    settings = load_settings(path, environ={"HOME": "/root", "PORT": "1", "DATABASE_DSN": "x"})
    assert settings == load_settings(path, environ={})


@pytest.mark.parametrize(
    "name",
    [
        "KMS_KMS_MASTER_PASSPHRASE",
        "KMS_KMS_MASTERPASSPHRASE",
        "KMS_MASTER_PASSPHRASE",
        "KMS_PASSPHRASE",
    ],
)
def test_the_passphrase_never_comes_from_the_environment(in_tmp: Path, name: str) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED)
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ={name: "hunter2"})
    assert name in str(excinfo.value)
    assert "hunter2" not in str(excinfo.value)


# -- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["abc", 0, 70000, True, -1, 80.5, "", None, [8080]], ids=repr)
def test_a_bad_port_in_the_file_names_the_setting(in_tmp: Path, port: object) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED, server={"port": port})
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ={})
    assert "server.port" in str(excinfo.value)


@pytest.mark.parametrize("port", ["abc", "0", "70000", "true", "-1", "8080.0", "", "\u0661"])
def test_a_bad_port_override_names_the_variable(in_tmp: Path, port: str) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED)
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ={"KMS_SERVER_PORT": port})
    assert "KMS_SERVER_PORT" in str(excinfo.value)


@pytest.mark.parametrize("port", [1, 65535, "443"])
def test_ports_at_the_edges_are_accepted(in_tmp: Path, port: object) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED, server={"port": port})
    assert load_settings(path, environ={}).port == int(port)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("server", "prot"),
        ("server", "servercert"),
        ("kms", "passphrase"),
        ("logging", "level"),
    ],
)
def test_an_unknown_setting_is_refused(in_tmp: Path, section: str, key: str) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED, **{section: {key: "x"}})
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ={})
    assert f"{section}.{key}" in str(excinfo.value)


def test_a_section_that_is_not_a_mapping_is_refused(in_tmp: Path) -> None:
    document = {**SEED, "server": "8443"}
    (in_tmp / "kms.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(in_tmp / "kms.yaml", environ={})
    assert "server" in str(excinfo.value)


def test_a_missing_database_dsn_is_refused(in_tmp: Path) -> None:
    document = {name: values for name, values in SEED.items() if name != "database"}
    path = write_config(in_tmp / "kms.yaml", document)
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ={})
    assert "database.dsn" in str(excinfo.value)
    # The environment can supply it.
    settings = load_settings(path, environ={"KMS_DATABASE_DSN": "sqlite:///x.db"})
    assert settings.database_url == "sqlite:///x.db"


@pytest.mark.parametrize("dsn", ["", "   ", 5, None], ids=repr)
def test_an_empty_database_dsn_is_refused(in_tmp: Path, dsn: object) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED, database={"dsn": dsn})
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ={})
    assert "database.dsn" in str(excinfo.value)


@pytest.mark.parametrize("iterations", [1000, MIN_ITERATIONS - 1, 0, "600k"])
def test_kdf_iterations_below_the_floor_are_refused(in_tmp: Path, iterations: object) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED, kms={"kdf_iterations": iterations})
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ={})
    assert "kms.kdf_iterations" in str(excinfo.value)


def test_kdf_iterations_from_the_environment_have_the_same_floor(in_tmp: Path) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED)
    with pytest.raises(ConfigurationError):
        load_settings(path, environ={"KMS_KMS_KDF_ITERATIONS": "1000"})


def test_kdf_iterations_can_be_raised(in_tmp: Path) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED, kms={"kdf_iterations": MIN_ITERATIONS * 2})
    assert load_settings(path, environ={}).kdf_iterations == MIN_ITERATIONS * 2


def test_the_production_default_is_600000_iterations() -> None:
    assert Settings(database_dsn="kms.db").kdf_iterations == 600_000


def test_settings_are_frozen(in_tmp: Path) -> None:
    settings = load_settings(write_config(in_tmp / "kms.yaml", SEED), environ={})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]
    assert settings.port == 8443  # the file's value, untouched by the refused assignment
    changed = settings.with_overrides(port=1)
    # A copy: the original keeps the file's value and the copy keeps every other setting.
    assert changed is not settings
    assert settings.port == 8443
    assert changed == Settings(**{**vars(settings), "port": 1})


# What a config file that names only the database gets, as docs/settings.md (generated from the
# declarations) shows; pinned here so that changing a default is a decision, not a side effect.
DOCUMENTED_DEFAULTS = {
    "host": "127.0.0.1",
    "port": 8080,
    "max_body_bytes": 1_048_576,
    "workers": 2,
    "threads": 4,
    "kdf_iterations": 600_000,
    "key_cache_size": 4096,
    "key_cache_bytes": 32 * 1024 * 1024,
    "cache_staleness_ms": 1000,
    "master_passphrase_file": None,
}


def test_a_file_with_only_the_database_gets_the_documented_defaults(in_tmp: Path) -> None:
    path = in_tmp / "minimal.yaml"
    path.write_text("database:\n  dsn: kms.db\n", encoding="utf-8")
    settings = load_settings(path, environ={})
    assert {name: getattr(settings, name) for name in DOCUMENTED_DEFAULTS} == DOCUMENTED_DEFAULTS


@pytest.mark.parametrize(
    ("key", "attribute", "text", "value"),
    [
        ("host", "host", "0.0.0.0", "0.0.0.0"),  # noqa: S104 - opening it is the operator's choice
        ("max_body_bytes", "max_body_bytes", "4096", 4096),
        ("workers", "workers", "5", 5),
        ("threads", "threads", "9", 9),
    ],
)
def test_server_settings_come_from_the_file_and_the_environment(
    in_tmp: Path, key: str, attribute: str, text: str, value: object
) -> None:
    from_file = load_settings(
        write_config(in_tmp / "kms.yaml", SEED, server={key: text}), environ={}
    )
    assert getattr(from_file, attribute) == value
    environ = {f"KMS_SERVER_{key.upper()}": text}
    from_env = load_settings(write_config(in_tmp / "plain.yaml", SEED), environ=environ)
    assert getattr(from_env, attribute) == value


@pytest.mark.parametrize(
    ("key", "attribute", "text", "value"),
    [
        ("cache_staleness_ms", "cache_staleness_ms", "0", 0),
        ("cache_staleness_ms", "cache_staleness_ms", "600000", 600_000),
        ("key_cache_bytes", "key_cache_bytes", "65536", 65536),
    ],
)
def test_cache_settings_come_from_the_file_and_the_environment(
    in_tmp: Path, key: str, attribute: str, text: str, value: object
) -> None:
    from_file = load_settings(
        write_config(in_tmp / "kms.yaml", SEED, kms={key: int(text)}), environ={}
    )
    assert getattr(from_file, attribute) == value
    environ = {f"KMS_KMS_{key.upper()}": text}
    from_env = load_settings(write_config(in_tmp / "plain.yaml", SEED), environ=environ)
    assert getattr(from_env, attribute) == value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cache_staleness_ms", -1),
        ("cache_staleness_ms", 600_001),
        ("cache_staleness_ms", "1s"),
        ("key_cache_bytes", 1024),
        ("key_cache_bytes", True),
    ],
)
def test_bad_cache_settings_name_the_setting(in_tmp: Path, key: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"kms.{key}"):
        load_settings(write_config(in_tmp / "kms.yaml", SEED, kms={key: value}), environ={})


def test_require_tls_files_names_what_is_missing(in_tmp: Path) -> None:
    settings = load_settings(write_config(in_tmp / "kms.yaml", SEED), environ={})
    with pytest.raises(ConfigurationError) as excinfo:
        settings.require_tls_files()
    assert "server.server_cert: cannot read" in str(excinfo.value)
    for name in ("server.crt", "server.key", "ca.pem"):
        (in_tmp / "certs").mkdir(exist_ok=True)
        (in_tmp / "certs" / name).write_text("x", encoding="ascii")
    settings.require_tls_files()


def test_an_unknown_override_in_a_known_section_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "kms.yaml"
    config.write_text("database:\n  dsn: ./kms.db\n")
    with pytest.raises(ConfigurationError, match="KMS_SERVER_PROT: unknown setting"):
        load_settings(config, environ={"KMS_SERVER_PROT": "8443"})


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        # A typo in the section part: no section to match it to, so it used to be ignored.
        ("KMS_SERVR_PORT", "KMS_SERVR_PORT: unknown setting; did you mean KMS_SERVER_PORT?"),
        ("KMS_DATABSE_DSN", "KMS_DATABSE_DSN: unknown setting; did you mean KMS_DATABASE_DSN?"),
        ("KMS_AUDIT_PAHT", "KMS_AUDIT_PAHT: unknown setting; did you mean KMS_AUDIT_PATH?"),
        # Nothing close: the variable alone.
        ("KMS_SOMETHING_ELSE", "KMS_SOMETHING_ELSE: unknown setting (environment)"),
    ],
)
def test_an_unknown_kms_variable_is_refused_naming_the_closest_setting(
    tmp_path: Path, variable: str, message: str
) -> None:
    config = tmp_path / "kms.yaml"
    config.write_text("database:\n  dsn: ./kms.db\n")
    with pytest.raises(ConfigurationError) as refused:
        load_settings(config, environ={variable: "8443"})
    assert str(refused.value).startswith(message)
    assert str(refused.value).endswith("(environment)")
    assert "\n" not in str(refused.value)


def test_the_kms_variables_that_are_not_settings_are_left_alone(tmp_path: Path) -> None:
    """The config file's, the ``kms client`` command's and the container build's variables."""
    config = tmp_path / "kms.yaml"
    config.write_text("database:\n  dsn: ./kms.db\n")
    others = {name: "x" for name in NOT_SETTINGS if name not in ("KMS_CONFIG", "KMS_ENV")}
    assert {"KMS_CLIENT_URL", "KMS_CLIENT_CA", "KMS_UID", "KMS_GID"} <= set(others)
    loaded = load_settings(config, environ={**others, "KMS_ENV": "prod"})
    assert loaded.source == str(config)


def test_every_kms_variable_the_repository_names_is_a_setting_or_listed() -> None:
    """A ``KMS_*`` name used anywhere in the code, the docs or the deploy files either overrides
    a setting or is one of ``NOT_SETTINGS`` (else the refusal above would stop kms where the
    repository itself sets it); names the tests make up to be refused are left out."""
    root = Path(__file__).resolve().parents[2]
    declared = {declaration.variable for declaration in DECLARATIONS.values()}
    files = [
        *root.glob("kms/**/*.py"),
        *root.glob("docs/*.md"),
        root / "README.md",
        root / "Makefile",
        *(path for path in root.glob("deploy/**/*") if path.is_file()),
        *root.glob("config/*"),
    ]
    files = [path for path in files if "node_modules" not in path.parts]
    named = {
        name
        for path in files
        for name in re.findall(r"\bKMS_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8"))
    }
    # App config keys (Flask's app.config), never read from the environment.
    app_config = {"KMS_MAX_BODY_BYTES", "KMS_AWS_ACCOUNT"}
    # Deliberately refused, and named so in the docs: the secrets never come from a variable;
    # the old spelling kept working by the loose match.
    refused = {n for n in named if "PASSPHRASE" in n and not n.endswith("FILE")}
    refused |= {n for n in named if n.endswith("_PIN")}
    refused |= {"KMS_SERVR_PORT"}  # docs/configuration.md's example of a typo refused
    loose = {n for n in named if _variable_or_none(n) is not None}
    assert named - declared - NOT_SETTINGS - app_config - refused - loose == set()


def _variable_or_none(name: str) -> object:
    try:
        return settings_module._variable(name)
    except ConfigurationError:
        return None


# -- the shipped config files -------------------------------------------------------------------

REPOSITORY_CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_the_shipped_dev_config_is_what_make_run_and_the_readme_use(in_tmp: Path) -> None:
    settings = load_settings(environ={"KMS_CONFIG": str(REPOSITORY_CONFIG / "config.dev.yaml")})
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)  # https://localhost:8080
    assert settings.server_cert == in_tmp / "secrets" / "server.crt"
    assert settings.server_key == in_tmp / "secrets" / "server.key"
    assert settings.ca_cert == in_tmp / "secrets" / "ca.pem"
    assert settings.master_passphrase_file == in_tmp / "secrets" / "master.key"
    assert settings.database_url == f"sqlite:///{in_tmp / 'data' / 'dev.db'}"
    assert settings.kdf_iterations >= MIN_ITERATIONS


def test_the_shipped_prod_config_keeps_secrets_in_the_credentials_directory(in_tmp: Path) -> None:
    credentials = Path("/run/credentials/kms.service")
    environ = {
        "KMS_CONFIG": str(REPOSITORY_CONFIG / "config.prod.yaml"),
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    settings = load_settings(environ=environ)
    for path in (
        settings.server_cert,
        settings.server_key,
        settings.ca_cert,
        settings.master_passphrase_file,
    ):
        assert path is not None and path.parent == credentials
    assert settings.database_url.startswith("sqlite:////var/lib/kms/")
    assert settings.host == "127.0.0.1"  # localhost only unless the operator opens it
    assert settings.kdf_iterations >= MIN_ITERATIONS
    # A deletion always waits: the example names the setting an operator would look for.
    assert "min_pending_days" in (REPOSITORY_CONFIG / "config.prod.yaml").read_text()
    assert settings.deletion_min_pending_days >= 1


def test_a_grouped_setting_is_read_from_its_section_and_overridden_by_its_variable(
    in_tmp: Path,
) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED, kms={"deletion": {"min_pending_days": 3}})
    assert load_settings(path, environ={}).deletion_min_pending_days == 3
    overridden = load_settings(path, environ={"KMS_KMS_DELETION_MIN_PENDING_DAYS": "9"})
    assert overridden.deletion_min_pending_days == 9
    write_config(path, SEED, kms={"deletion": {"min_pending_days": 31}})
    with pytest.raises(ConfigurationError, match=r"kms\.deletion\.min_pending_days: must be"):
        load_settings(path, environ={})


# -- ${CREDENTIALS_DIRECTORY}: systemd's LoadCredential= ------------------------------------


def test_paths_may_name_the_systemd_credentials_directory() -> None:
    document = {
        "server": {
            "server_cert": "${CREDENTIALS_DIRECTORY}/server.crt",
            "server_key": "$CREDENTIALS_DIRECTORY/server.key",
            "ca_cert": "${CREDENTIALS_DIRECTORY}/ca.pem",
        },
        "kms": {"master_passphrase_file": "${CREDENTIALS_DIRECTORY}/master.key"},
        "database": {"dsn": "/var/lib/kms/kms.db"},
    }
    environ = {"CREDENTIALS_DIRECTORY": "/run/credentials/kms.service"}
    settings = settings_from_mapping(document, environ, source="unit.yaml")
    credentials = Path("/run/credentials/kms.service")
    assert settings.server_cert == credentials / "server.crt"
    assert settings.server_key == credentials / "server.key"
    assert settings.ca_cert == credentials / "ca.pem"
    assert settings.master_passphrase_file == credentials / "master.key"


def test_an_environment_override_may_name_it_too() -> None:
    environ = {
        "CREDENTIALS_DIRECTORY": "/run/credentials/kms.service",
        "KMS_KMS_MASTER_PASSPHRASE_FILE": "${CREDENTIALS_DIRECTORY}/passphrase",
    }
    settings = settings_from_mapping({"database": {"dsn": "x.db"}}, environ, source="t.yaml")
    assert settings.master_passphrase_file == Path("/run/credentials/kms.service/passphrase")


def test_naming_it_without_systemd_is_one_line_naming_the_setting() -> None:
    document = {"database": {"dsn": "x.db"}, "server": {"ca_cert": "${CREDENTIALS_DIRECTORY}/ca"}}
    with pytest.raises(ConfigurationError) as caught:
        settings_from_mapping(document, {}, source="unit.yaml")
    message = caught.value.public_message
    assert message.startswith("server.ca_cert: names ${CREDENTIALS_DIRECTORY}")
    assert "unit.yaml" in message and "\n" not in message


def test_nothing_else_is_expanded() -> None:
    environ = {"CREDENTIALS_DIRECTORY": "/creds", "HOME": "/root"}
    document = {
        "database": {"dsn": "postgresql+psycopg://kms:pa$CREDENTIALS_DIRECTORY@db/kms"},
        "audit": {"path": "/var/log/$HOME/audit.log"},
    }
    settings = settings_from_mapping(document, environ, source="t.yaml")
    assert settings.database_dsn == "postgresql+psycopg://kms:pa$CREDENTIALS_DIRECTORY@db/kms"
    assert settings.audit_path == Path("/var/log/$HOME/audit.log")


# -- old spellings: still read, with one warning each --------------------------------------------

#: The seed's keys as earlier releases wrote them, plus two more camelCase ones.
OLD_SPELLINGS: dict[str, dict[str, Any]] = {
    "server": {
        "port": 8443,
        "serverCert": "certs/server.crt",
        "serverKey": "certs/server.key",
        "caCert": "certs/ca.pem",
        "maxBatchItems": 10,
    },
    "kms": {"master_passphrase_file": "secrets/master.key", "cacheStalenessMs": 0},
    "database": {"dsn": "data/kms.db"},
}


def test_a_file_with_the_old_spellings_loads_with_one_warning_per_old_key(
    in_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = write_config(in_tmp / "old.yaml", OLD_SPELLINGS)
    new = write_config(
        in_tmp / "new.yaml", SEED, server={"max_batch_items": 10}, kms={"cache_staleness_ms": 0}
    )
    with caplog.at_level(logging.WARNING, logger="kms.settings"):
        settings = load_settings(old, environ={})
    assert settings == load_settings(new, environ={})
    assert (settings.max_batch_items, settings.cache_staleness_ms) == (10, 0)
    renamed = [
        ("server.serverCert", "server.server_cert"),
        ("server.serverKey", "server.server_key"),
        ("server.caCert", "server.ca_cert"),
        ("server.maxBatchItems", "server.max_batch_items"),
        ("kms.cacheStalenessMs", "kms.cache_staleness_ms"),
    ]
    assert sorted(caplog.messages) == sorted(
        f"kms: {old}: {before} is deprecated, write {after}" for before, after in renamed
    )


def test_a_file_with_the_new_spellings_loads_without_a_warning(
    in_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(in_tmp / "new.yaml", SEED, server={"max_batch_items": 10})
    with caplog.at_level(logging.DEBUG, logger="kms.settings"):
        assert load_settings(path, environ={"KMS_SERVER_PORT": "1"}).max_batch_items == 10
    assert caplog.messages == []


@pytest.mark.parametrize(
    "declaration", [d for d in DECLARATIONS.values() if d.aliases], ids=lambda d: d.key
)
def test_every_old_spelling_reaches_its_setting(
    declaration: Declaration, caplog: pytest.LogCaptureFixture
) -> None:
    (alias,) = declaration.aliases
    value = sample(declaration)
    with caplog.at_level(logging.WARNING, logger="kms.settings"):
        settings = settings_from_mapping(document_setting(alias, value), {}, source="t.yaml")
    assert getattr(settings, declaration.attribute) == declaration.field.deserialize(value)
    assert caplog.messages == [f"kms: t.yaml: {alias} is deprecated, write {declaration.key}"]


def test_a_setting_under_both_spellings_is_refused_naming_both(in_tmp: Path) -> None:
    path = write_config(
        in_tmp / "both.yaml", SEED, server={"maxBatchItems": 10, "max_batch_items": 10}
    )
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ={})
    assert excinfo.value.public_message == (
        "server.maxBatchItems and server.max_batch_items both set server.max_batch_items: "
        f"keep only server.max_batch_items ({path})"
    )


def test_a_refused_file_logs_its_one_error_and_no_warning(
    in_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    document = {**OLD_SPELLINGS, "server": {**OLD_SPELLINGS["server"], "maxBatchItems": 0}}
    path = write_config(in_tmp / "old.yaml", document)
    refused = pytest.raises(ConfigurationError, match="server.maxBatchItems: must be between 1")
    with caplog.at_level(logging.WARNING, logger="kms.settings"), refused:
        load_settings(path, environ={})
    assert caplog.messages == []


def test_another_spelling_of_a_variable_works_and_is_deprecated(
    in_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED)
    with caplog.at_level(logging.WARNING, logger="kms.settings"):
        settings = load_settings(path, environ={"KMS_SERVER_MAXBATCHITEMS": "7"})
    assert settings.max_batch_items == 7
    assert caplog.messages == [
        "kms: KMS_SERVER_MAXBATCHITEMS is deprecated, set KMS_SERVER_MAX_BATCH_ITEMS"
    ]


def test_two_variables_for_one_setting_are_refused_naming_both(in_tmp: Path) -> None:
    path = write_config(in_tmp / "kms.yaml", SEED)
    environ = {"KMS_SERVER_MAX_BATCH_ITEMS": "8", "KMS_SERVER_MAXBATCHITEMS": "7"}
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ=environ)
    assert excinfo.value.public_message == (
        "KMS_SERVER_MAXBATCHITEMS and KMS_SERVER_MAX_BATCH_ITEMS both set "
        "server.max_batch_items: keep only KMS_SERVER_MAX_BATCH_ITEMS (environment)"
    )


def test_the_shipped_configs_use_only_the_new_spellings(
    in_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {"CREDENTIALS_DIRECTORY": "/run/credentials/kms.service"}
    paths = sorted(REPOSITORY_CONFIG.glob("config.*.yaml"))
    assert [path.name for path in paths] == ["config.dev.yaml", "config.prod.yaml"]
    with caplog.at_level(logging.WARNING, logger="kms.settings"):
        for path in paths:
            load_settings(path, environ=environ)
    assert caplog.messages == []


#: An old key followed by a colon, as YAML holds it (a quoted dict key in Python is not one).
OLD_KEY_IN_YAML = re.compile(
    r"(?<![\w\"'])("
    + "|".join(alias.split(".")[-1] for d in DECLARATIONS.values() for alias in d.aliases)
    + r"):"
)


def test_no_config_or_yaml_fixture_in_the_repository_writes_an_old_key() -> None:
    root = REPOSITORY_CONFIG.parent
    found = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("config", "deploy", "tests", "bench", "scripts", "docs")
        for path in sorted((root / folder).rglob("*"))
        if path.suffix in (".py", ".yaml", ".yml", ".md")
        # docs/settings.md lists the old spellings; this file tests that they still load.
        and path.name not in ("settings.md", "test_settings.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OLD_KEY_IN_YAML.search(line)
    ]
    assert found == []


# -- the declarations ---------------------------------------------------------------------------

SNAKE_CASE_KEY = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,2}")


def test_every_attribute_is_a_declared_setting_but_the_test_floor_and_the_source() -> None:
    attributes = {item.name for item in dataclasses.fields(Settings)}
    assert attributes - set(DECLARATIONS) == {"insecure_test_kdf_floor", "source"}


def test_every_key_is_snake_case_and_every_old_spelling_is_the_same_words() -> None:
    spellings = [spelling for d in DECLARATIONS.values() for spelling in (d.key, *d.aliases)]
    assert len(set(spellings)) == len(spellings)
    for declaration in DECLARATIONS.values():
        assert SNAKE_CASE_KEY.fullmatch(declaration.key), declaration.key
        assert declaration.doc and "|" not in declaration.doc, declaration.key
        for alias in declaration.aliases:
            assert not SNAKE_CASE_KEY.fullmatch(alias), alias
            assert alias.lower() == declaration.key.replace("_", "").lower(), alias


def test_no_two_variables_differ_only_in_underscores() -> None:
    # Other spellings of a variable are found by ignoring case and underscores.
    loose = [d.variable.replace("_", "") for d in DECLARATIONS.values()]
    assert len(set(loose)) == len(loose)


BASE_DOCUMENT: dict[str, dict[str, Any]] = {
    "database": {"dsn": "base.db"},
    "rate_limit": {"rate": 1, "burst": 1},  # the two are set together or not at all
}


def sample(declaration: Declaration) -> Any:
    """A value the setting accepts, other than its default."""
    field = declaration.field
    if isinstance(field, StrictInteger):
        return field.high
    if isinstance(field, StrictBoolean):
        return not declaration.default
    if isinstance(field, fields.Float):
        return 2.5
    if "example" in field.metadata:  # text of a given form
        return field.metadata["example"]
    if "choices" in field.metadata:
        return next(choice for choice in field.metadata["choices"] if choice != declaration.default)
    # Text, file paths and the DSN: any non-empty text loads.
    return "example"


def document_setting(key: str, value: Any) -> dict[str, Any]:
    document: dict[str, Any] = {name: dict(values) for name, values in BASE_DOCUMENT.items()}
    *mappings, name = key.split(".")
    section = document
    for mapping in mappings:
        section = section.setdefault(mapping, {})
    section[name] = value
    return document


@pytest.mark.parametrize("declaration", DECLARATIONS.values(), ids=lambda d: d.key)
def test_every_setting_is_read_from_its_key_and_from_its_variable(
    in_tmp: Path, declaration: Declaration
) -> None:
    value = sample(declaration)
    expected = declaration.field.deserialize(value)
    assert expected != declaration.default
    from_file = settings_from_mapping(document_setting(declaration.key, value), {}, "t.yaml")
    assert getattr(from_file, declaration.attribute) == expected
    text = str(value).lower() if isinstance(value, bool) else str(value)
    environ = {declaration.variable: text}
    from_environment = settings_from_mapping(BASE_DOCUMENT, environ, "t.yaml")
    assert getattr(from_environment, declaration.attribute) == expected


def test_the_master_key_backend_is_one_of_two_and_the_hsm_pin_never_an_environment_variable(
    in_tmp: Path,
) -> None:
    with pytest.raises(ConfigurationError, match="kms.master_key.backend: must be one of"):
        settings_from_mapping(document_setting("kms.master_key.backend", "vault"), {}, "t.yaml")
    for variable in ("KMS_KMS_MASTER_KEY_PIN", "KMS_MASTER_KEY_PIN", "KMS_HSM_PIN"):
        with pytest.raises(ConfigurationError, match="PIN is never read from the environment"):
            settings_from_mapping(BASE_DOCUMENT, {variable: "1234"}, "t.yaml")
    pin_file = settings_from_mapping(
        BASE_DOCUMENT, {"KMS_KMS_MASTER_KEY_PIN_FILE": str(in_tmp / "pin")}, "t.yaml"
    ).pkcs11_pin_file
    assert pin_file == in_tmp / "pin"
