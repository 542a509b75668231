"""Development certificates and passphrase, made with ``cryptography`` (no openssl needed).

Writes the seed's file names: ``ca.pem``, ``ca.key``, ``server.crt``, ``server.key``,
``client.crt``, ``client.key`` and ``master.key`` (a random passphrase, mode 0400).
For development and tests only: production certificates come from the operator's own CA.

Every certificate is valid for ``VALIDITY`` (365 days) from when it is made; kms warns at start
from 30 days before the server's expires (kms.server.tlsfiles). ``renew_dev_certificates`` makes
a new CA, server and client certificate and key in place and leaves ``master.key`` alone: the
passphrase opens the keystores made with it (``data/dev.db``) as before. Each new file is
written beside the old one and renamed over it, so a running kms, which follows its TLS files,
never reads half a file; it serves with the new ones once all of them match.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILE_NAMES = (
    "ca.pem",
    "ca.key",
    "server.crt",
    "server.key",
    "client.crt",
    "client.key",
    "master.key",
)
KEPT_FILE = "master.key"  # the passphrase: never replaced by a renewal
VALIDITY = timedelta(days=365)


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_authority(common_name: str = "kms-dev-ca", now: datetime | None = None) -> Authority:
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key=key, certificate=certificate)


def issue_certificate(
    authority: Authority,
    common_name: str,
    *,
    server: bool,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(authority.key, hashes.SHA256())


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite, even if a file appears between the check and the write.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def _certificate_files(client_common_name: str) -> list[tuple[str, bytes, int]]:
    """A new dev CA, a server certificate for localhost/127.0.0.1/::1 and a client certificate,
    as ``(file name, PEM, mode)``, keys before their certificates."""
    authority = new_authority()
    server_key, server_cert = issue_certificate(
        authority,
        "localhost",
        server=True,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1", "::1"),
    )
    client_key, client_cert = issue_certificate(
        authority, client_common_name, server=False, dns_names=(client_common_name,)
    )
    return [
        ("ca.key", private_key_pem(authority.key), 0o600),
        ("ca.pem", certificate_pem(authority.certificate), 0o644),
        ("server.key", private_key_pem(server_key), 0o600),
        ("server.crt", certificate_pem(server_cert), 0o644),
        ("client.key", private_key_pem(client_key), 0o600),
        ("client.crt", certificate_pem(client_cert), 0o644),
    ]


def write_dev_certificates(directory: Path, client_common_name: str = "orchestrator") -> None:
    """Write the dev CA, a server cert for localhost/127.0.0.1/::1, a client cert and a
    random passphrase. Raises FileExistsError, writing nothing, if any of the files exists."""
    existing = [name for name in FILE_NAMES if (directory / name).exists()]
    if existing:
        raise FileExistsError(f"{directory / existing[0]} already exists; refusing to overwrite")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, data, mode in _certificate_files(client_common_name):
        _write(directory / name, data, mode)
    _write(directory / KEPT_FILE, secrets.token_urlsafe(32).encode("ascii") + b"\n", 0o400)


def renew_dev_certificates(directory: Path, client_common_name: str | None = None) -> str:
    """Replace the dev CA and the server and client certificates and keys in ``directory`` with
    new ones, valid ``VALIDITY`` from now; ``master.key`` is neither read nor changed. The client
    certificate keeps its common name (``client_common_name`` if given). Returns that name.

    Raises FileNotFoundError, writing nothing, unless ``directory`` holds a ``master.key``: a
    renewal without the passphrase would leave nothing that opens the keystore.
    """
    if not (directory / KEPT_FILE).is_file():
        raise FileNotFoundError(
            f"{directory / KEPT_FILE} does not exist: nothing to renew (without --renew, "
            "kms dev-certs writes new files and a new passphrase)"
        )
    if client_common_name is None:
        client_common_name = _client_common_name(directory / "client.crt") or "orchestrator"
    for name, data, mode in _certificate_files(client_common_name):
        _replace(directory / name, data, mode)
    return client_common_name


def _client_common_name(path: Path) -> str | None:
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` beside ``path`` and rename it over ``path``: a reader sees the old file
    or the new one, never part of either."""
    temporary = path.with_name(f".{path.name}.renew-{secrets.token_hex(4)}")
    try:
        _write(temporary, data, mode)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def issue_crl(
    authority: Authority,
    revoked_serials: tuple[int, ...] = (),
    *,
    last_update: datetime | None = None,
    next_update: datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL of ``authority`` revoking ``revoked_serials``, current for a day unless told."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.certificate.subject)
        .last_update(last_update or now - timedelta(minutes=5))
        .next_update(next_update or now + timedelta(days=1))
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(minutes=5))
            .build()
        )
    return builder.sign(authority.key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)
