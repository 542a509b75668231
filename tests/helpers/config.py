"""Config files in the seed's format (``server``, ``kms``, ``database``... sections of YAML),
written for the tests from a document of sections."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

Sections = Mapping[str, Mapping[str, Any]]


def write_config(
    path: Path,
    document: Sections | None = None,
    *,
    directory: Path | None = None,
    port: int | None = None,
    passphrase_file: Path | None = None,
    dsn: Path | str | None = None,
    server_cert: Path | None = None,
    server_key: Path | None = None,
    ca_cert: Path | None = None,
    **sections: Mapping[str, Any],
) -> Path:
    """Write a config file at ``path`` (its directory made if need be) and return ``path``.

    The document written is ``document`` if given. Otherwise, with ``directory``, a deployment's
    config: a server on ``port`` with two gthread workers of four threads, the dev certificates
    (``kms dev-certs``'s files), the passphrase file and the database (``dsn``) in
    ``directory``, each replaced by its argument if given, and an audit log there
    (``directory/audit.log``). Otherwise only what the operator commands read:
    ``passphrase_file`` and ``dsn``.

    ``sections`` are merged over the document key by key: ``kms={"cache_staleness_ms": 0}``
    adds a setting to the ``kms`` section and keeps the others.
    """
    merged: dict[str, dict[str, Any]] = {}
    if document is not None:
        merged = {name: dict(values) for name, values in document.items()}
    elif directory is not None:
        assert port is not None, "a deployment's config needs its port"
        merged = {
            "server": {
                "port": port,
                "server_cert": str(server_cert or directory / "server.crt"),
                "server_key": str(server_key or directory / "server.key"),
                "ca_cert": str(ca_cert or directory / "ca.pem"),
                "workers": 2,
                "threads": 4,
            },
            "kms": {"master_passphrase_file": str(passphrase_file or directory / "master.key")},
            "database": {"dsn": str(dsn or directory / "kms.db")},
            "audit": {"path": str(directory / "audit.log")},
        }
    else:
        assert passphrase_file is not None and dsn is not None, "nothing to write"
        merged = {
            "kms": {"master_passphrase_file": str(passphrase_file)},
            "database": {"dsn": str(dsn)},
        }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
    return path
