"""TLS files that exist but cannot be used: ``kms serve`` says which file and why, in one line.

Each case damages one file of a copy of the dev certificates (garbage, the wrong kind of PEM, a
key that is not the certificate's, a CRL that is expired, foreign or mixed with a certificate)
and runs the real ``kms serve``: exit 1, one ``kms:`` line naming the file and the problem, no
traceback, no worker started (``one_line_failure``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kms.devcerts import Authority, certificate_pem, crl_pem, issue_crl, new_authority
from tests.helpers.config import write_config
from tests.helpers.harness import free_port, initialise_database, run_kms
from tests.system.test_startup_faults import one_line_failure

pytestmark = pytest.mark.slow

# A PEM frame around bytes that are no certificate.
DAMAGED_CERTIFICATE = (
    b"-----BEGIN CERTIFICATE-----\nTUlJQm5vdCBhIGNlcnRpZmljYXRl\n-----END CERTIFICATE-----\n"
)


def authority_of(directory: Path) -> Authority:
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    certificate = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    return Authority(key=key, certificate=certificate)  # type: ignore[arg-type]


def copy_file(source: str, target: str) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        (directory / target).write_bytes((directory / source).read_bytes())

    return damage


def write(name: str, data: bytes) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        (directory / name).write_bytes(data)

    return damage


def expired_crl(directory: Path) -> None:
    now = datetime.now(UTC)
    crl = issue_crl(
        authority_of(directory),
        last_update=now - timedelta(days=2),
        next_update=now - timedelta(days=1),
    )
    (directory / "crl.pem").write_bytes(crl_pem(crl))


def foreign_crl(directory: Path) -> None:
    (directory / "crl.pem").write_bytes(crl_pem(issue_crl(new_authority("another-ca"))))


def crl_in_the_ca_bundle(directory: Path) -> None:
    # Where OpenSSL would load it and never check it: revoked clients would get in.
    crl = crl_pem(issue_crl(authority_of(directory)))
    (directory / "ca.pem").write_bytes((directory / "ca.pem").read_bytes() + crl)


def crl_with_a_certificate(directory: Path) -> None:
    # A certificate in the CRL file would join the trusted store: refused, not ignored.
    crl = crl_pem(issue_crl(authority_of(directory)))
    stranger = certificate_pem(new_authority("smuggled-ca").certificate)
    (directory / "crl.pem").write_bytes(crl + stranger)


# (damage, the file named, what the line says, with a CRL file configured)
CASES: dict[str, tuple[Callable[[Path], None], str, str, bool]] = {
    "garbage certificate": (
        write("server.crt", b"\x8f\x00garbage" * 80),
        "server.crt",
        "is not in PEM format",
        False,
    ),
    "empty certificate": (write("server.crt", b""), "server.crt", "is not in PEM format", False),
    "damaged certificate": (
        write("server.crt", DAMAGED_CERTIFICATE),
        "server.crt",
        "cannot be parsed",
        False,
    ),
    "a key where the certificate should be": (
        copy_file("server.key", "server.crt"),
        "server.crt",
        "holds a private key",
        False,
    ),
    "a certificate where the key should be": (
        copy_file("server.crt", "server.key"),
        "server.key",
        "holds 0 private keys",
        False,
    ),
    "mismatched key": (
        copy_file("client.key", "server.key"),
        "server.key",
        "does not match",
        False,
    ),
    "garbage key": (
        write("server.key", b"not a key\n"),
        "server.key",
        "is not in PEM format",
        False,
    ),
    "garbage CA bundle": (
        write("ca.pem", b"not a certificate\n"),
        "ca.pem",
        "is not in PEM format",
        False,
    ),
    "a key as the CA bundle": (
        copy_file("ca.key", "ca.pem"),
        "ca.pem",
        "holds a private key",
        False,
    ),
    "a CRL in the CA bundle": (
        crl_in_the_ca_bundle,
        "ca.pem",
        "give CRLs in server.crl_file",
        False,
    ),
    "garbage CRL": (write("crl.pem", b"\x00\x01garbage"), "crl.pem", "is not in PEM format", True),
    "expired CRL": (expired_crl, "crl.pem", "expired at", True),
    "CRL of another CA": (foreign_crl, "crl.pem", "that no CA of server.ca_cert", True),
    "certificate in the CRL file": (crl_with_a_certificate, "crl.pem", "holds a certificate", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_serve_names_an_unusable_tls_file_in_one_line(
    certificates: Path, tmp_path: Path, case: str
) -> None:
    damage, name, problem, with_crl = CASES[case]
    directory = tmp_path / "certs"
    shutil.copytree(certificates, directory)
    if with_crl:
        (directory / "crl.pem").write_bytes(crl_pem(issue_crl(authority_of(directory))))
    damage(directory)
    database = tmp_path / "kms.db"
    initialise_database(database, directory / "master.key")
    server: dict[str, Any] = {"crl_file": str(directory / "crl.pem")} if with_crl else {}
    config = write_config(
        tmp_path / "config.yaml", directory=directory, port=free_port(), dsn=database, server=server
    )
    line = one_line_failure(run_kms("serve", config=config, cwd=tmp_path), directory / name)
    assert problem in line
    assert "-----BEGIN" not in line  # names the file, never shows its content


def test_serve_starts_with_a_current_crl_of_its_ca(certificates: Path, tmp_path: Path) -> None:
    # The control for the CRL cases: the same setup with a good CRL gets past every TLS check
    # (to the passphrase, deliberately wrong here so that the server does not stay up).
    directory = tmp_path / "certs"
    shutil.copytree(certificates, directory)
    (directory / "crl.pem").write_bytes(crl_pem(issue_crl(authority_of(directory))))
    database = tmp_path / "kms.db"
    initialise_database(database, directory / "master.key")
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"not the passphrase\n")
    wrong.chmod(0o400)
    config = write_config(
        tmp_path / "config.yaml",
        directory=directory,
        port=free_port(),
        dsn=database,
        passphrase_file=wrong,
        server={"crl_file": str(directory / "crl.pem")},
    )
    assert "wrong master passphrase" in one_line_failure(
        run_kms("serve", config=config, cwd=tmp_path)
    )
