"""The start-up warning for a server certificate near its end (kms.server.tlsfiles): none while
more than 30 days are left, one line from 30 days before, another once it has expired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kms.devcerts import certificate_pem, issue_certificate, new_authority
from kms.server.tlsfiles import EXPIRY_WARNING, TLSFile, expiry_warning

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def server_certificate(tmp_path: Path, not_after: datetime) -> TLSFile:
    authority = new_authority(now=NOW - timedelta(days=400))
    _key, certificate = issue_certificate(
        authority,
        "localhost",
        server=True,
        not_before=NOW - timedelta(days=300),
        not_after=not_after,
    )
    path = tmp_path / "server.crt"
    path.write_bytes(certificate_pem(certificate))
    return TLSFile("server.server_cert", path)


@pytest.mark.parametrize("left", [timedelta(days=365), EXPIRY_WARNING + timedelta(minutes=1)])
def test_no_warning_while_more_than_30_days_are_left(tmp_path: Path, left: timedelta) -> None:
    assert expiry_warning(server_certificate(tmp_path, NOW + left), NOW) is None


@pytest.mark.parametrize(
    ("left", "shown"),
    [
        (EXPIRY_WARNING, "in 30 days"),
        (timedelta(days=1, hours=2), "in 1 day"),
        (timedelta(hours=3), "in less than a day"),
    ],
)
def test_a_warning_within_30_days(tmp_path: Path, left: timedelta, shown: str) -> None:
    file = server_certificate(tmp_path, NOW + left)
    expires = (NOW + left).strftime("%Y-%m-%d %H:%M UTC")
    assert expiry_warning(file, NOW) == (
        f"kms: the server certificate {file.path} (server.server_cert) expires on {expires}, "
        f"{shown}: renew it (kms dev-certs --renew DIR renews development certificates)"
    )


def test_a_warning_once_expired(tmp_path: Path) -> None:
    file = server_certificate(tmp_path, NOW - timedelta(days=2))
    assert expiry_warning(file, NOW) == (
        f"kms: the server certificate {file.path} (server.server_cert) expired on 2027-02-27 "
        "12:00 UTC: clients refuse it; renew it (kms dev-certs --renew DIR renews development "
        "certificates)"
    )


def test_a_file_that_cannot_be_read_now_is_not_warned_about(tmp_path: Path) -> None:
    """Its check at start has already named it; the warning never stops a start."""
    assert expiry_warning(TLSFile("server.server_cert", tmp_path / "gone.crt"), NOW) is None
