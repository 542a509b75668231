"""What the workers of one node share, set up by gunicorn's master (``kms.gunicorn_conf``).

- A runtime directory, made fresh at start and removed at exit: ``metrics/`` for
  ``prometheus_client``'s multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set before any worker
  imports ``prometheus_client``) and ``rate-limit.table``, the token buckets all workers share.
- The authorization policy, loaded at start (an invalid file stops the server) and again on
  SIGHUP, when gunicorn starts new workers that inherit it (an invalid file is refused there, and
  the old policy stays).
- A check that the audit log is a regular file that can be appended to, before the port is
  bound, and the repair of a last line an interrupted write left incomplete (once the keyring
  is open: the repair line is sealed with the audit key).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kms.errors import ConfigurationError
from kms.settings import Settings

if TYPE_CHECKING:
    from kms.audit import HasAuditKey

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class RuntimeDirectory:
    path: Path
    #: True when kms made ``path`` and removes it at exit.
    owned: bool

    @property
    def metrics(self) -> Path:
        return Path(os.environ[METRICS_DIR_VARIABLE])

    @property
    def rate_limit_table(self) -> Path:
        return self.path / "rate-limit.table"


def prepare_runtime_directory() -> RuntimeDirectory:
    """Make the runtime directory and point prometheus_client at a fresh ``metrics/`` in it.

    An operator may set ``PROMETHEUS_MULTIPROC_DIR`` (say to a systemd RuntimeDirectory); its
    old ``*.db`` files are removed, so counts start from zero with the server.
    """
    path = Path(tempfile.mkdtemp(prefix="kms-node-"))
    given = os.environ.get(METRICS_DIR_VARIABLE)
    if given:
        metrics = Path(given)
        metrics.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in metrics.glob("*.db"):
            stale.unlink()
    else:
        metrics = path / "metrics"
        metrics.mkdir(mode=0o700)
        os.environ[METRICS_DIR_VARIABLE] = str(metrics)
    return RuntimeDirectory(path=path, owned=True)


def remove_runtime_directory(runtime: RuntimeDirectory) -> None:
    if runtime.owned:
        shutil.rmtree(runtime.path, ignore_errors=True)


def check_audit_log(settings: Settings) -> None:
    """Raise ConfigurationError unless the audit log is a regular file that can be appended to
    now (a FIFO or a device such as /dev/null would lose every line)."""
    if settings.audit_path is None:
        return
    from kms.audit import AuditLog

    try:
        AuditLog.check_writable(settings.audit_path)
    except OSError as error:
        raise ConfigurationError(
            f"audit.path: cannot append to {settings.audit_path}: {error.strerror}"
        ) from None


def repair_audit_log(settings: Settings, keyring: HasAuditKey) -> None:
    """Remove an incomplete last line of the audit log (kms.audit.AuditLog.repair: it logs that
    it did, and records it in the chain); raise ConfigurationError if that cannot be done."""
    if settings.audit_path is None:
        return
    from kms.audit import AuditKey, AuditLog

    try:
        AuditLog(settings.audit_path, AuditKey.of(keyring)).repair()
    except OSError as error:
        raise ConfigurationError(
            f"audit.path: cannot repair the incomplete last line of {settings.audit_path}: "
            f"{error.strerror}"
        ) from None


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges; its counters stay, so totals never go backwards."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
