"""The serving limits (issue 6): settings in the seed's format, their bounds and overrides."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import yaml

from kms.errors import ConfigurationError
from kms.server.limits import ServerLimits
from kms.server.tls import ReloadableContext
from kms.server.worker import KMSWorker
from kms.settings import load_settings


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
    path = write(tmp_path / "k.yaml", handshake_timeout=2, header_timeout=3, max_connections=64)
    environ = {"KMS_SERVER_BODY_TIMEOUT": "4", "KMS_SERVER_BODY_MIN_RATE": "0"}
    settings = load_settings(path, environ=environ)
    assert (settings.handshake_timeout, settings.header_timeout) == (2, 3)
    assert (settings.body_timeout, settings.body_min_rate, settings.max_connections) == (4, 0, 64)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("handshake_timeout", 0),
        ("header_timeout", 301),
        ("body_timeout", "soon"),
        ("body_min_rate", -1),
        ("max_connections", 15),
        ("max_connections", 2.5),
    ],
)
def test_a_bad_value_names_the_setting(tmp_path: Path, key: str, value: object) -> None:
    path = write(tmp_path / "k.yaml", **{key: value})
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(path, environ={})
    assert f"server.{key}" in str(excinfo.value)


def test_the_tls_context_cache_is_on_unless_switched_off(tmp_path: Path) -> None:
    default = load_settings(write(tmp_path / "a.yaml"), environ={})
    assert ServerLimits.from_settings(default).tls_context_cache is True
    off = load_settings(write(tmp_path / "c.yaml", tls_context_cache=False), environ={})
    assert ServerLimits.from_settings(off).tls_context_cache is False
    environ = {"KMS_SERVER_TLS_CONTEXT_CACHE": "false"}
    assert load_settings(write(tmp_path / "d.yaml"), environ=environ).tls_context_cache is False


@pytest.mark.parametrize("value", ["no", 0, 1, "yes", None])
def test_the_tls_context_cache_takes_only_true_or_false(tmp_path: Path, value: object) -> None:
    refused = r"server\.tls_context_cache: must be true or false"
    with pytest.raises(ConfigurationError, match=refused):
        load_settings(write(tmp_path / "k.yaml", tls_context_cache=value), environ={})


class _Worker:
    """What ``KMSWorker.context_for_connection`` reads of its worker."""

    def __init__(self, cache: bool) -> None:
        self.limits = ServerLimits(tls_context_cache=cache)
        self.built = 0

    def build_ssl_context(self) -> ssl.SSLContext:
        self.built += 1
        return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


@pytest.mark.parametrize("cache", [True, False])
def test_a_worker_builds_a_context_per_connection_only_without_the_cache(
    tmp_path: Path, cache: bool
) -> None:
    worker = _Worker(cache)
    tls = ReloadableContext(worker.build_ssl_context, [tmp_path / "none"], logging.getLogger())
    first = KMSWorker.context_for_connection(worker, tls)  # type: ignore[arg-type]
    second = KMSWorker.context_for_connection(worker, tls)  # type: ignore[arg-type]
    if cache:
        assert first is second is tls.current()
        assert worker.built == 1
    else:
        assert first is not second
        assert tls.current() not in (first, second)
        assert worker.built == 3
