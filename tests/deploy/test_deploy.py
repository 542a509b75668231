"""deploy/: the systemd unit, the Dockerfile and the compose file, checked by the tools that exist.

The container files as files: the compose file parses, builds deploy/Dockerfile, starts kms only
after a one-shot ``kms init --if-needed`` on its PostgreSQL, and names only files that exist or
that ``kms dev-certs`` writes (tests/deploy/test_container.py builds and runs the image with
podman, and runs the compose file with podman-compose). ``systemd-analyze`` checks the unit when
it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kms.devcerts import FILE_NAMES
from kms.settings import load_settings

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "deploy" / "systemd" / "kms.service"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
PROD_CONFIG = ROOT / "config" / "config.prod.yaml"
CREDENTIAL = re.compile(r"\$\{CREDENTIALS_DIRECTORY\}/([^\"'\s]+)")


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) in order; systemd allows a key more than once."""
    entries, section = [], ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key, value))
    return entries


def service_values(key: str) -> list[str]:
    return [
        value for section, name, value in unit_entries() if section == "Service" and name == key
    ]


def service_value(key: str) -> str:
    values = service_values(key)
    assert len(values) == 1, (key, values)
    return values[0]


def credentials_the_config_names() -> set[str]:
    return set(CREDENTIAL.findall(PROD_CONFIG.read_text(encoding="utf-8")))


# -- systemd ------------------------------------------------------------------------------------


def test_the_old_unit_location_is_gone() -> None:
    assert not (ROOT / "deploy" / "kms.service").exists()


def test_the_unit_runs_kms_serve_as_its_own_user_and_restarts_only_after_a_crash() -> None:
    assert service_value("User") == "kms"
    assert service_value("ExecStart").endswith("/bin/kms serve")
    assert service_value("Restart") == "on-failure"
    assert service_value("RestartPreventExitStatus") == "1"  # a refused start is not retried
    assert service_value("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert service_value("Environment") == "KMS_CONFIG=/etc/kms/config.prod.yaml"


def test_the_unit_has_the_hardening_users_expect() -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ReadWritePaths": "/var/lib/kms",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "LimitCORE": "0",
    }
    assert {key: service_value(key) for key in expected} == expected
    assert "@system-service" in service_values("SystemCallFilter")


def test_every_credential_the_config_names_is_loaded_by_the_unit() -> None:
    loaded = {value.split(":", 1)[0] for value in service_values("LoadCredential")}
    named = credentials_the_config_names()
    assert named == {"master.key", "server.crt", "server.key", "ca.pem"}
    assert loaded == named


def test_the_prod_config_resolves_inside_the_credentials_directory(tmp_path: Path) -> None:
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    settings = load_settings(PROD_CONFIG, environ=environ)
    for path in (
        settings.server_cert,
        settings.server_key,
        settings.ca_cert,
        settings.master_passphrase_file,
    ):
        assert path is not None and path.parent == tmp_path


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.needs("systemd-analyze")


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's kms script.
    unit = tmp_path / "kms.service"
    kms = Path(sys.executable).with_name("kms")
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/kms/venv/bin/kms", str(kms)))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_systemd_analyze
def test_systemd_analyze_rates_the_unit_2_or_lower() -> None:
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for kms\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout


# -- containers ---------------------------------------------------------------------------------


def compose() -> dict:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_compose_builds_the_dockerfile() -> None:
    services = compose()["services"]
    # kms:local unless KMS_IMAGE names another (tests/deploy/test_container.py does).
    assert services["kms"]["image"] == services["kms-init"]["image"] == "${KMS_IMAGE:-kms:local}"
    build = services["kms-init"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_mounts_the_secrets_kms_dev_certs_writes(tmp_path: Path) -> None:
    document = compose()
    service = document["services"]["kms"]
    targets = {secret["target"] for secret in service["secrets"]}
    assert targets == credentials_the_config_names()
    assert service["environment"]["CREDENTIALS_DIRECTORY"] == "/run/secrets"
    # Where `make run` has kms dev-certs write them, under the names it gives them.
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    secrets_dir = re.search(r"^SECRETS \?= (.+)$", makefile, re.MULTILINE).group(1)
    for secret in service["secrets"]:
        source = (COMPOSE.parent / document["secrets"][secret["source"]]["file"]).resolve()
        assert source.parent == (ROOT / secrets_dir).resolve(), source
        assert source.name == secret["target"], secret
        assert source.name in FILE_NAMES


def test_compose_names_only_files_that_exist() -> None:
    service = compose()["services"]["kms"]
    for volume in service["volumes"]:
        source = volume.split(":", 1)[0]
        if source.startswith("."):
            assert (COMPOSE.parent / source).is_file(), volume
        else:
            assert source in compose()["volumes"], volume  # a named volume


def test_compose_initialises_its_postgresql_once_before_serving() -> None:
    services = compose()["services"]
    init, kms, db = services["kms-init"], services["kms"], services["db"]
    assert init["command"] == ["kms", "init", "--if-needed"]
    assert init["restart"] == "no"
    assert init["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert kms["depends_on"] == {"kms-init": {"condition": "service_completed_successfully"}}
    assert kms["command"] == ["kms", "serve"]
    assert "pg_isready" in db["healthcheck"]["test"]
    assert db["image"].startswith("docker.io/library/postgres:15")
    for service in (init, kms):
        dsn = service["environment"]["KMS_DATABASE_DSN"]
        assert dsn.startswith("postgresql+psycopg://kms:") and dsn.endswith("@db:5432/kms"), dsn
        assert dsn.split(":")[2].split("@")[0] == db["environment"]["POSTGRES_PASSWORD"]
        assert "kms-data:/var/lib/kms" in service["volumes"]  # the audit log and state files
    # Published on 127.0.0.1 only: 8443 unless KMS_PUBLISHED_PORT names another.
    assert kms["ports"] == ["127.0.0.1:${KMS_PUBLISHED_PORT:-8443}:8443"]
    # The init needs the passphrase only; the TLS files are the server's.
    assert [secret["target"] for secret in init["secrets"]] == ["master.key"]


def test_the_dockerfile_is_slim_non_root_and_copies_nothing_secret() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    instructions = [
        line.split(None, 1) for line in text.splitlines() if line and not line.startswith(" ")
    ]
    instructions = [(word, rest) for word, *rest_list in instructions for rest in rest_list or [""]]
    bases = [rest for word, rest in instructions if word == "FROM"]
    # Debian bookworm: scripts/debian_base_image.sh stands in for it under this name.
    assert bases == ["docker.io/library/debian:bookworm-slim"], bases
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    for word, rest in instructions:
        if word == "COPY" and "--from=" not in rest:
            *sources, _destination = rest.split()
            for source in sources:
                # build/wheelhouse is made by `make wheelhouse` before a build.
                assert source == "build/wheelhouse" or (ROOT / source).exists(), source
                assert not source.startswith(("secrets", "data")), source
                assert not source.endswith((".key", ".pem", ".db")), source
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {"secrets/", "data/", "*.db"} <= set(ignored)
    assert "HEALTHCHECK" not in [word for word, _ in instructions]


def test_the_operations_doc_initialises_as_the_service_user_with_the_units_credentials() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    init = operations.split("systemd-run --uid=kms", 1)[1].split("```", 1)[0]
    assert "/opt/kms/venv/bin/kms init" in init
    loaded = {value for value in service_values("LoadCredential") if value.startswith("master.key")}
    assert loaded and all(f"LoadCredential={value}" in init for value in loaded)
    assert "KMS_CONFIG=/etc/kms/config.prod.yaml" in init
