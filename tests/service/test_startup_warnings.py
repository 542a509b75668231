"""The start-up warnings the docs promise (README, docs/settings.md): one line when no
``authorization.policy_file`` is set (every client may do everything) and one when no
``audit.path`` is set (nothing is audited); neither when the setting is there.

They are logged once per server, by gunicorn's master as it starts (``on_starting`` in
``kms.gunicorn_conf``), not by each worker's app. That module reads kms's settings when imported,
so the hook runs in a fresh interpreter (as in ``test_gunicorn_conf.py``), which loads the module
again for each case with that case's ``KMS_CONFIG``, and with a stand-in for gunicorn's server
whose error log collects the lines. No server is started and no port is bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms.devcerts import (
    Authority,
    certificate_pem,
    issue_certificate,
    private_key_pem,
    write_dev_certificates,
)
from kms.master import init_database
from kms.settings import Settings
from tests.helpers.config import write_config
from tests.helpers.harness import free_port
from tests.helpers.keystore import TEST_PASSPHRASE, write_passphrase_file

POLICY_WARNING = (
    "kms: no authorization.policy_file is set: every client with a certificate may do everything"
)
AUDIT_WARNING = "kms: no audit.path is set: requests are not audited"

PROBE = r"""
import importlib, json, logging, os, sys


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append([record.levelname, record.getMessage()])


collect = Collect()


class Server:
    # As much of gunicorn's Arbiter as the start and exit hooks use.

    class log:
        class error_log:
            handlers = [collect]

    @staticmethod
    def murder_workers():
        pass


conf = None
report = {}
for case, config in json.loads(sys.argv[1]).items():
    # A master of its own per case: the module reads KMS_CONFIG when (re)loaded.
    os.environ["KMS_CONFIG"] = config
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if conf is None:
        import kms.gunicorn_conf as conf
    else:
        conf = importlib.reload(conf)
    collect.lines = []
    # The start hook builds the TLS context from gunicorn's settings, as gunicorn's master has them.
    from gunicorn.config import Config

    Server.cfg = Config()
    for name in ("certfile", "keyfile", "ca_certs", "cert_reqs", "ssl_context"):
        Server.cfg.set(name, getattr(conf, name))
    conf.on_starting(Server)
    conf.on_exit(Server)
    report[case] = collect.lines
print(json.dumps(report))
"""

#: Which of the two settings each case sets: (policy file, audit path).
CASES = {
    "neither": (False, False),
    "policy only": (True, False),
    "audit only": (False, True),
    "both": (True, True),
}


def case_config(directory: Path, database: Path, *, policy: bool, audit: bool) -> Path:
    """A case's config: a policy file or none, an audit log or none."""
    directory.mkdir()
    # Real ones: the start hook checks the TLS files before anything else (kms.server.tlsfiles).
    write_dev_certificates(directory / "tls")
    for name in ("server.crt", "server.key", "ca.pem"):
        shutil.copy(directory / "tls" / name, directory / name)
    document: dict[str, dict[str, object]] = {
        "server": {
            "server_cert": str(directory / "server.crt"),
            "server_key": str(directory / "server.key"),
            "ca_cert": str(directory / "ca.pem"),
            "port": free_port(),
        },
        "kms": {"master_passphrase_file": str(database.with_name("master.key"))},
        "database": {"dsn": str(database)},
    }
    if policy:
        policy_file = directory / "policy.yaml"
        policy_file.write_text(
            'clients:\n  "cn:admin":\n    - operations: ["*"]\n      keys: ["*"]\n',
            encoding="utf-8",
        )
        document["authorization"] = {"policy_file": str(policy_file)}
    if audit:
        document["audit"] = {"path": str(directory / "audit.log")}
    return write_config(directory / "config.yaml", document)


def start_hook_lines(directory: Path, configs: dict[str, Path]) -> dict[str, list[list[str]]]:
    """Each case's log lines from the master's start hook, all cases in one interpreter, with
    the keystore the configs name made first: ``directory / "kms.db"`` and its passphrase file.

    The keystore has the production KDF floor, which a config file cannot lower: each case's
    master derives its key once (about half a second).
    """
    passphrase = write_passphrase_file(directory / "master.key", TEST_PASSPHRASE)
    database = directory / "kms.db"
    init_database(Settings(database_dsn=str(database), master_passphrase_file=passphrase))
    environ = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            json.dumps({case: str(path) for case, path in configs.items()}),
        ],
        env=environ,
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def start_lines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[str]]]:
    directory = tmp_path_factory.mktemp("startup-warnings")
    database = directory / "kms.db"
    configs = {
        case: case_config(directory / f"case-{n}", database, policy=policy, audit=audit)
        for n, (case, (policy, audit)) in enumerate(CASES.items())
    }
    return start_hook_lines(directory, configs)


@pytest.mark.parametrize("case", CASES)
def test_a_warning_for_each_missing_setting_and_none_for_a_set_one(
    start_lines: dict[str, list[list[str]]], case: str
) -> None:
    policy, audit = CASES[case]
    warnings = [message for level, message in start_lines[case] if level == "WARNING"]
    expected = ([] if policy else [POLICY_WARNING]) + ([] if audit else [AUDIT_WARNING])
    assert warnings == expected


def test_the_docs_promise_both_warnings() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert f"[WARNING] {POLICY_WARNING}" in readme  # the first run's output
    table = (root / "docs" / "settings.md").read_text(encoding="utf-8")
    [audit_row] = [line for line in table.splitlines() if line.startswith("| `audit.path` |")]
    assert "(warned at start)" in audit_row


# -- the server certificate near its end --------------------------------------------------------

#: Days left on each case's server certificate (negative: expired that long ago).
EXPIRY_CASES = {"a year left": 365, "ten days left": 10, "expired": -2}


def expiry_case_config(directory: Path, database: Path, days_left: int) -> Path:
    """A config whose server certificate ends ``days_left`` days from now, with a policy file and
    an audit log (so no other warning is due)."""
    config = case_config(directory, database, policy=True, audit=True)
    authority_key = serialization.load_pem_private_key(
        (directory / "tls" / "ca.key").read_bytes(), password=None
    )
    assert isinstance(authority_key, ec.EllipticCurvePrivateKey)
    authority = Authority(
        key=authority_key,
        certificate=x509.load_pem_x509_certificate((directory / "tls" / "ca.pem").read_bytes()),
    )
    now = datetime.now(UTC)
    key, certificate = issue_certificate(
        authority,
        "localhost",
        server=True,
        dns_names=("localhost",),
        not_before=now - timedelta(days=300),
        not_after=now + timedelta(days=days_left),
    )
    (directory / "server.key").write_bytes(private_key_pem(key))
    (directory / "server.crt").write_bytes(certificate_pem(certificate))
    return config


@pytest.fixture(scope="module")
def expiry_lines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[str]]]:
    directory = tmp_path_factory.mktemp("certificate-expiry")
    database = directory / "kms.db"
    configs = {
        case: expiry_case_config(directory / f"case-{n}", database, days)
        for n, (case, days) in enumerate(EXPIRY_CASES.items())
    }
    return start_hook_lines(directory, configs)


@pytest.mark.parametrize("case", EXPIRY_CASES)
def test_one_warning_for_a_server_certificate_that_expires_within_30_days(
    expiry_lines: dict[str, list[list[str]]], case: str
) -> None:
    warnings = [message for level, message in expiry_lines[case] if level == "WARNING"]
    days = EXPIRY_CASES[case]
    if days > 30:
        assert warnings == []
        return
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert warning.startswith("kms: the server certificate ")
    assert "(server.server_cert)" in warning
    assert "kms dev-certs --renew DIR" in warning
    if days < 0:
        assert " expired on " in warning
    else:
        assert f", in {days - 1} days: " in warning or f", in {days} days: " in warning
