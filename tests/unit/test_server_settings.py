"""The serving limits (issue 6): settings in the seed's format, their bounds and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kms.errors import ConfigurationError
from kms.server.limits import ServerLimits
from kms.settings import load_settings

NAMES = {
    "handshakeTimeout": "handshake_timeout",
    "headerTimeout": "header_timeout",
    "bodyTimeout": "body_timeout",
    "bodyMinRate": "body_min_rate",
    "maxConnections": "max_connections",
}


def write(path: Path, **server: object) -> Path:
    document = {"server": {"port": 8443, **server}, "database": {"dsn": "kms.db"}}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    limits = ServerLimits.from_settings(load_settings(write(tmp_path / "k.yaml"), environ={}))
    assert limits == ServerLimits(
        handshake_timeout=5.0,
        header_timeout=10.0,
        body_timeout=10.0,
        body_min_rate=1024,
        max_connections=1000,
    )
    assert limits == ServerLimits()


def test_values_from_the_file_and_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "k.yaml", handshakeTimeout=2, headerTimeout=3, maxConnections=64)
    environ = {"KMS_SERVER_BODY_TIMEOUT": "4", "KMS_SERVER_BODYMINRATE": "0"}
    settings = load_settings(path, environ=environ)
    assert (settings.handshake_timeout, settings.header_timeout) == (2, 3)
    assert (settings.body_timeout, settings.body_min_rate, settings.max_connections) == (4, 0, 64)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("handshakeTimeout", 0),
        ("headerTimeout", 301),
        ("bodyTimeout", "soon"),
        ("bodyMinRate", -1),
        ("maxConnections", 15),
        ("maxConnections", 2.5),
    ],
)
def test_a_bad_value_names_the_setting(tmp_path: Path, key: str, value: object) -> None:
    path = write(tmp_path / "k.yaml", **{key: value})
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ={})
    assert f"server.{key}" in str(excinfo.value)
