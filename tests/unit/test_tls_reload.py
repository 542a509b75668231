"""The TLS context that follows its files (kms.server.tls.ReloadableContext): rebuilt when a file
changes, and only then; a change made while it loads is loaded at the next check."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from kms.server.tls import ReloadableContext


def context_over(
    cert: Path, built: list[ssl.SSLContext], during_second_build: str = ""
) -> ReloadableContext:
    def build() -> ssl.SSLContext:
        built.append(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        if len(built) == 2 and during_second_build:
            cert.write_text(during_second_build)
        return built[-1]

    # No check on current(): each test calls reload_if_changed itself.
    return ReloadableContext(build, [cert], logging.getLogger("kms.tests.tls"), check_interval=3600)


def test_the_context_is_rebuilt_when_its_files_change_and_only_then(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("one")
    built: list[ssl.SSLContext] = []
    tls = context_over(cert, built)
    first = tls.current()
    with caplog.at_level(logging.INFO):
        assert tls.reload_if_changed() is False
        assert tls.reload_if_changed() is False
    assert tls.current() is first and len(built) == 1 and tls.generation == 1
    assert "reloaded" not in caplog.text  # nothing to say every second
    cert.write_text("two, longer")
    with caplog.at_level(logging.INFO):
        assert tls.reload_if_changed() is True
    assert tls.current() is built[1] and tls.generation == 2
    assert "kms: TLS files reloaded: " + str(cert) in caplog.text


def test_files_changed_again_while_loading_are_loaded_at_the_next_check(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("one")
    built: list[ssl.SSLContext] = []
    tls = context_over(cert, built, during_second_build="three, longer still")
    first = tls.current()
    cert.write_text("two, longer")
    assert tls.reload_if_changed() is False  # half of a swap, maybe: not used
    assert tls.current() is first and tls.generation == 1
    assert tls.reload_if_changed() is True
    assert tls.current() is built[2] and tls.generation == 2


def test_files_that_cannot_be_loaded_leave_the_context_in_use_and_are_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("one")
    built: list[ssl.SSLContext] = []

    def build() -> ssl.SSLContext:
        if cert.read_text() == "broken":
            raise ssl.SSLError("no certificate in the file")
        built.append(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        return built[-1]

    tls = ReloadableContext(build, [cert], logging.getLogger("kms.tests.tls"), check_interval=3600)
    first = tls.current()
    cert.write_text("broken")
    assert tls.reload_if_changed() is False
    assert tls.reload_if_changed() is False
    assert tls.current() is first and tls.generation == 1
    refusals = [r for r in caplog.records if "TLS files refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
    cert.write_text("two, fixed")
    assert tls.reload_if_changed() is True
    assert tls.current() is built[1]
