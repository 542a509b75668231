"""``deploy/systemd/kms.service``, the unit docs/operations.md describes.

What cannot be tested here: systemd actually starting kms, refusing to restart it after status 1,
denying it core dumps, or sending SIGHUP on ``systemctl reload`` (no systemd runs as init in the
test environment). The closest observable facts are tested instead: the unit's settings, parsed;
``systemd-analyze verify`` accepting the unit without a single warning (where it is installed);
and, elsewhere, kms's side of each contract: a failed start exits exactly 1
(tests/http/test_startup.py), SIGHUP re-executes the workers and SIGTERM exits 0
(tests/http/test_serving.py).
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "kms.service"
GUNICORN_CONF = Path(__file__).resolve().parents[2] / "kms" / "gunicorn_conf.py"


def unit() -> configparser.ConfigParser:
    # Not strict: systemd allows a key more than once (one LoadCredential= per file); the last
    # one wins here, which is enough for the single-valued settings these tests read.
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_a_failed_start_is_not_restarted_but_a_crash_is() -> None:
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    # kms exits 1 for a wrong passphrase, an unreadable file or an uninitialised database:
    # restarting would only repeat the failure (and, for a prompt, hang).
    assert service["RestartPreventExitStatus"].split() == ["1"]


def test_core_dumps_are_disabled() -> None:
    """The process memory holds the master key and unwrapped data keys (docs/security.md,
    Security notes)."""
    assert unit()["Service"]["LimitCORE"] == "0"


def test_systemd_supervises_the_gunicorn_master_and_reload_is_sighup() -> None:
    service = unit()["Service"]
    assert service["Type"] == "simple"
    assert service["ExecStart"].split() == ["/opt/kms/venv/bin/kms", "serve"]
    assert service["ExecReload"].split() == ["/bin/kill", "-HUP", "$MAINPID"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["Environment"] == "KMS_CONFIG=/etc/kms/config.prod.yaml"
    assert (service["User"], service["Group"]) == ("kms", "kms")


def test_systemd_waits_longer_than_gunicorns_graceful_shutdown() -> None:
    """SIGTERM lets in-flight requests finish: systemd must not SIGKILL before gunicorn is done."""
    match = re.search(r"^graceful_timeout = (\d+)$", GUNICORN_CONF.read_text(), re.MULTILINE)
    assert match is not None
    assert int(unit()["Service"]["TimeoutStopSec"]) > int(match.group(1))


def test_only_the_database_directory_is_writable() -> None:
    service = unit()["Service"]
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"].split() == ["/var/lib/kms"]
    assert service["NoNewPrivileges"] in ("true", "yes")


@pytest.mark.needs("systemd-analyze")
def test_systemd_analyze_verifies_the_unit_without_warnings(tmp_path: Path) -> None:
    # The unit names /opt/kms/venv, which does not exist here; point it at this venv's kms.
    kms = Path(sys.executable).with_name("kms")
    text = UNIT.read_text(encoding="utf-8").replace("/opt/kms/venv/bin/kms", str(kms))
    (tmp_path / "kms.service").write_text(text, encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "kms.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # a misspelt value is only a warning
