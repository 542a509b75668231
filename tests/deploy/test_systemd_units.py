"""Every unit in ``deploy/systemd/`` and the operator wrapper ``deploy/systemd/kms-admin``, run.

The promises of docs/operations.md: each one-shot unit (rotate-due, destroy-due, backup) gets its
credentials the way ``kms.service`` does, ``systemd-analyze security`` rates every unit at most
2.0, and an operator runs ``backup``, ``restore``, ``rekey``, ``check`` and ``audit verify`` as
root with the service's config and credentials through ``kms-admin`` (installed as ``kms``).

No systemd runs as init here, so nothing is started by systemd. What systemd would do is done by
the test, from the unit files themselves: a host laid out as docs/operations.md lays it out
(``/etc/kms``, ``/etc/kms/credentials``, ``/var/lib/kms``, ``/var/backups/kms``, mapped into a
temporary directory), a database made by ``kms init`` as step 5 does, then each unit's
``ExecStart`` line (``%%`` unescaped, as systemd does) with the environment its ``[Service]``
section gives it: ``Environment=``, ``WorkingDirectory=`` and a credentials directory holding
a copy of each ``LoadCredential=`` file, named by ``$CREDENTIALS_DIRECTORY``. ``kms-admin`` runs
with a stand-in ``systemd-run`` on ``PATH`` that does the same for the properties the wrapper
passes. Neither switches to the ``kms`` user (the test host has none).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kms.audit import AuditKey, AuditLog
from kms.devcerts import write_dev_certificates
from kms.master import open_master_keyring
from kms.settings import load_settings
from tests.helpers.harness import COMMAND_TIMEOUT_SECONDS, clean_environment

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
ONESHOTS = [unit for unit in UNITS if unit.name != "kms.service"]
TIMERS = sorted(SYSTEMD.glob("*.timer"))
WRAPPER = SYSTEMD / "kms-admin"
KMS = Path(sys.executable).with_name("kms")
#: The host paths docs/operations.md installs into, and the one program path.
HOST_PATHS = ("/etc/kms", "/var/lib/kms", "/var/backups/kms", "/run/credentials")
INSTALLED_KMS = "/opt/kms/venv/bin/kms"
#: What does, for kms-admin, what systemd-run would (tests/helpers/systemd_run.py says what).
STAND_IN = ROOT / "tests" / "helpers" / "systemd_run.py"


def service_entries(unit: Path) -> list[tuple[str, str]]:
    """The ``[Service]`` section's (key, value) pairs in order (a key may repeat)."""
    entries, section = [], ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            entries.append((key, value))
    return entries


def values(unit: Path, key: str) -> list[str]:
    return [value for name, value in service_entries(unit) if name == key]


def value(unit: Path, key: str) -> str:
    found = values(unit, key)
    assert len(found) == 1, (unit.name, key, found)
    return found[0]


def audit_key_of(host: Host) -> AuditKey:
    """The audit key of the host's keystore, as the server derives it (its keyring)."""
    environ = {"CREDENTIALS_DIRECTORY": str(host.path("/etc/kms/credentials"))}
    settings = load_settings(host.path("/etc/kms/config.prod.yaml"), environ)
    keyring = open_master_keyring(settings)
    try:
        return AuditKey.of(keyring)
    finally:
        keyring.close()


class Host:
    """A host laid out as docs/operations.md's steps 1 to 5 lay it out, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def map(self, text: str) -> str:
        """``text`` with every host path moved under ``root`` and /opt/kms's kms made this one."""
        text = text.replace(INSTALLED_KMS, str(KMS))
        for host_path in HOST_PATHS:
            text = re.sub(
                rf"(?<![\w/]){re.escape(host_path)}(?=/|\b|$)", str(self.path(host_path)), text
            )
        return text

    def set_up(self) -> None:
        for directory in ("/etc/kms/credentials", "/var/lib/kms", "/var/backups/kms"):
            self.path(directory).mkdir(parents=True, mode=0o700)
        prod = (ROOT / "config" / "config.prod.yaml").read_text(encoding="utf-8")
        self.path("/etc/kms/config.prod.yaml").write_text(self.map(prod), encoding="utf-8")
        shutil.copy(ROOT / "config" / "policy.example.yaml", self.path("/etc/kms/policy.yaml"))
        self.write_secret("/etc/kms/credentials/master.key", "correct horse battery staple\n")
        # Step 4's TLS files: kms.service loads them (the one-shot units do not).
        write_dev_certificates(self.root / "dev-certs")
        for name in ("server.crt", "server.key", "ca.pem"):
            shutil.copy(self.root / "dev-certs" / name, self.path(f"/etc/kms/credentials/{name}"))

    def write_secret(self, host_path: str, content: str) -> None:
        path = self.path(host_path)
        path.write_text(content, encoding="utf-8")
        path.chmod(0o400)

    def run_as_unit(
        self, unit: Path, command: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``command`` (the unit's ExecStart by default) as systemd would run it for ``unit``."""
        command = command if command is not None else value(unit, "ExecStart")
        credentials = self.path(f"/run/credentials/{unit.name}")
        credentials.mkdir(parents=True, mode=0o700)
        try:
            for credential in values(unit, "LoadCredential"):
                name, _, source = credential.partition(":")
                shutil.copy(self.path(source), credentials / name)
                (credentials / name).chmod(0o400)
            environ = clean_environment()
            for assignment in values(unit, "Environment"):
                name, _, setting = assignment.partition("=")
                environ[name] = self.map(setting)
            environ["CREDENTIALS_DIRECTORY"] = str(credentials)
            argv = shlex.split(self.map(command.replace("%%", "%")))
            return subprocess.run(
                argv,
                env=environ,
                cwd=self.map(value(unit, "WorkingDirectory")),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_SECONDS,
                check=False,
            )
        finally:
            shutil.rmtree(credentials)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    """The host, its database initialised by docs/operations.md's step 5 (as kms.service)."""
    host = Host(tmp_path_factory.mktemp("host"))
    host.set_up()
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert f"{INSTALLED_KMS} init" in operations
    init = host.run_as_unit(SYSTEMD / "kms.service", f"{INSTALLED_KMS} init")
    assert init.returncode == 0, init.stderr
    assert "kms: initialised" in init.stdout
    return host


# -- the unit files -----------------------------------------------------------------------------


def test_every_unit_lives_in_deploy_systemd() -> None:
    assert not list((ROOT / "deploy").glob("*.service")) and not list(
        (ROOT / "deploy").glob("*.timer")
    )
    assert {unit.name for unit in ONESHOTS} == {
        "kms-rotate-due.service",
        "kms-destroy-due.service",
        "kms-backup.service",
    }
    assert {timer.stem for timer in TIMERS} == {unit.stem for unit in ONESHOTS}


@pytest.mark.parametrize("unit", ONESHOTS, ids=lambda unit: unit.name)
def test_each_oneshot_runs_as_the_service_with_its_config_and_credentials(unit: Path) -> None:
    service = SYSTEMD / "kms.service"
    for key in ("User", "Group", "WorkingDirectory", "Environment"):
        assert value(unit, key) == value(service, key), key
    assert value(unit, "Type") == "oneshot"
    served = set(values(service, "LoadCredential"))
    loaded = set(values(unit, "LoadCredential"))
    assert "master.key:/etc/kms/credentials/master.key" in loaded
    assert loaded <= served  # the TLS files are the server's only
    # The hardening of kms.service, all of it; the database directory stays writable.
    for key in ("ProtectSystem", "CapabilityBoundingSet", "SystemCallFilter", "LimitCORE"):
        assert values(unit, key) == values(service, key), key
    assert "/var/lib/kms" in value(unit, "ReadWritePaths").split()


@pytest.mark.parametrize("timer", TIMERS, ids=lambda timer: timer.name)
def test_each_timer_starts_its_unit(timer: Path) -> None:
    text = timer.read_text(encoding="utf-8")
    assert f"Unit={timer.stem}.service" in text
    assert "Persistent=true" in text


@pytest.mark.needs("systemd-analyze")
@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_systemd_analyze_rates_each_unit_2_or_lower(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", result.stdout
    )
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout


@pytest.mark.needs("systemd-analyze")
def test_systemd_analyze_verifies_every_unit_and_timer(tmp_path: Path) -> None:
    # verify checks that each ExecStart program exists: this environment's kms for /opt/kms's.
    for path in [*UNITS, *TIMERS]:
        text = path.read_text(encoding="utf-8").replace(INSTALLED_KMS, str(KMS))
        (tmp_path / path.name).write_text(text, encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(path.name for path in [*UNITS, *TIMERS])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


# -- each unit's command, as systemd runs it ----------------------------------------------------


def test_rotate_due_runs_as_its_unit(host: Host) -> None:
    result = host.run_as_unit(SYSTEMD / "kms-rotate-due.service")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^kms: 0 keys rotated", result.stdout, re.MULTILINE), result.stdout


def test_destroy_due_runs_as_its_unit(host: Host) -> None:
    result = host.run_as_unit(SYSTEMD / "kms-destroy-due.service")
    assert result.returncode == 0, result.stderr
    assert "kms: 0 keys destroyed in " in result.stdout


def test_backup_runs_as_its_unit_and_writes_a_dated_backup(host: Host) -> None:
    before = set(host.path("/var/backups/kms").iterdir())
    result = host.run_as_unit(SYSTEMD / "kms-backup.service")
    assert result.returncode == 0, result.stderr
    (written,) = set(host.path("/var/backups/kms").iterdir()) - before
    assert re.fullmatch(r"kms-\d{4}-\d\d-\d\dT\d{6}\.backup", written.name), written.name
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    # An encrypted backup: one cleartext header line (docs/security.md, "Backups").
    header = written.read_bytes().split(b"\n", 1)[0]
    assert json.loads(header)["format"].startswith("kms-backup/")


# -- the operator's kms, through systemd-run ----------------------------------------------------


def operator_kms(
    host: Host, *arguments: str, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``kms ARGUMENTS`` as root types it, with kms-admin installed as ``kms``."""
    bin_directory = host.root / "bin"
    if not bin_directory.exists():
        bin_directory.mkdir()
        systemd_run = bin_directory / "systemd-run"
        systemd_run.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
        systemd_run.chmod(0o755)
        shutil.copy(WRAPPER, bin_directory / "kms")
    environ = clean_environment()
    environ.update(
        PATH=f"{bin_directory}{os.pathsep}{environ['PATH']}",
        HOST_ROOT=str(host.root),
        KMS=str(KMS),
        CALLS=str(host.root / "calls.jsonl"),
        **(environment or {}),
    )
    return subprocess.run(
        ["kms", *arguments],
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )


def last_systemd_run(host: Host) -> list[str]:
    lines = (host.root / "calls.jsonl").read_text(encoding="utf-8").splitlines()
    arguments: list[str] = json.loads(lines[-1])
    return arguments


def test_an_operator_backs_up_verifies_the_audit_log_rekeys_checks_and_restores(
    host: Host,
) -> None:
    backup = host.path("/var/backups/kms/by-hand.backup")
    result = operator_kms(host, "backup", "/var/backups/kms/by-hand.backup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert backup.is_file()
    # What the wrapper asked systemd-run for: what kms.service has.
    arguments = last_systemd_run(host)
    service = SYSTEMD / "kms.service"
    assert f"--uid={value(service, 'User')}" in arguments
    assert f"--gid={value(service, 'Group')}" in arguments
    assert "--wait" in arguments and "--pipe" in arguments  # no terminal here
    pairs = list(zip(arguments, arguments[1:], strict=False))
    assert ("-E", value(service, "Environment")) in pairs
    assert ("-p", f"WorkingDirectory={value(service, 'WorkingDirectory')}") in pairs
    assert ("-p", "LoadCredential=master.key:/etc/kms/credentials/master.key") in pairs
    assert "master.key:/etc/kms/credentials/master.key" in values(service, "LoadCredential")
    assert arguments[-3:] == [INSTALLED_KMS, "backup", "/var/backups/kms/by-hand.backup"]

    # The server's audit log, two requests long (as a server writes them).
    audit = AuditLog(host.path("/var/lib/kms/audit.log"), audit_key_of(host))
    audit.append({"event": "request", "operation": "encrypt"})
    audit.append({"event": "answer", "operation": "encrypt", "status": 200})
    result = operator_kms(host, "audit", "verify", "/var/lib/kms/audit.log")
    assert result.returncode == 0, result.stdout + result.stderr
    # The file's first line, then the two: every MAC checked under the keystore's audit key.
    assert "3 lines" in result.stdout and "MACs checked" in result.stdout, result.stdout

    # Rekey, as docs/operations.md says: the new passphrase in a root-only file, handed over as
    # a credential, then put in place of the old one.
    host.write_secret("/etc/kms/credentials/new-master.key", "a new passphrase for kms\n")
    result = operator_kms(
        host, "rekey", "--new-passphrase-file", "/etc/kms/credentials/new-master.key"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "only the new passphrase opens it now" in result.stdout
    assert "LoadCredential=new-master.key:/etc/kms/credentials/new-master.key" in (
        last_systemd_run(host)
    )
    os.replace(
        host.path("/etc/kms/credentials/new-master.key"),
        host.path("/etc/kms/credentials/master.key"),
    )
    result = operator_kms(host, "check")
    assert result.returncode == 0, result.stdout + result.stderr

    # Restore the backup, taken under the old passphrase, into a new database named the way the
    # document says (a KMS_* variable of the operator's shell), with the old passphrase back.
    host.path("/etc/kms/credentials/master.key").unlink()
    host.write_secret("/etc/kms/credentials/master.key", "correct horse battery staple\n")
    result = operator_kms(
        host,
        "restore",
        "/var/backups/kms/by-hand.backup",
        environment={"KMS_DATABASE_DSN": "/var/lib/kms/restored.db"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert host.path("/var/lib/kms/restored.db").is_file()
    assert ("-E", "KMS_DATABASE_DSN=/var/lib/kms/restored.db") in list(
        zip(last_systemd_run(host), last_systemd_run(host)[1:], strict=False)
    )
