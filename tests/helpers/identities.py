"""Client certificates for more identities, issued by a deployment's own dev CA, and private
servers with extra settings (a policy, rate limits) for the security tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kms.devcerts import certificate_pem, private_key_pem
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    new_session,
)


def issue_client_certificate(
    deployment: Deployment,
    name: str,
    common_name: str | tuple[str, ...] | None,
    dns_names: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """A client certificate from the deployment's CA (the one the server trusts); a tuple of
    common names gives the subject one CN attribute each, in that order."""
    ca_key = serialization.load_pem_private_key(deployment.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(deployment.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    common_names = (common_name,) if isinstance(common_name, str) else common_name or ()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])
    now = ca_cert.not_valid_before_utc
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(dns) for dns in dns_names]
    names += [x509.UniformResourceIdentifier(uri) for uri in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    cert_path = deployment.directory / f"{name}.crt"
    key_path = deployment.directory / f"{name}.key"
    cert_path.write_bytes(certificate_pem(certificate))
    key_path.write_bytes(private_key_pem(key))
    return cert_path, key_path


class IdentityClient(KMSClient):
    """A KMSClient that presents another client certificate."""

    def __init__(self, deployment: Deployment, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        super().__init__(deployment)

    def new_session(self) -> requests.Session:
        return new_session(self.cert, self.key, self.deployment.ca_cert)


def identity_client(
    deployment: Deployment,
    name: str,
    common_name: str | tuple[str, ...] | None,
    dns_names: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
) -> IdentityClient:
    cert, key = issue_client_certificate(deployment, name, common_name, dns_names, uris)
    return IdentityClient(deployment, cert, key)


@contextmanager
def running_server(deployment: Deployment) -> Iterator[ServerProcess]:
    """``kms serve`` for one test module; it must stop cleanly and never log a traceback."""
    server = ServerProcess(deployment)
    probe = KMSClient(deployment)
    try:
        server.wait_until_serving(probe)
    except BaseException:
        # A server that answered its first request with an error still runs: stop it, or it
        # outlives the test run.
        server.stop()
        raise
    finally:
        probe.close()
    try:
        yield server
    finally:
        returncode = server.stop()
    output = server.output()
    assert returncode == 0, f"kms serve exited {returncode}:\n{output}"
    assert "Traceback" not in output, output


def audit_records(deployment: Deployment) -> list[dict[str, Any]]:
    """Every line of the audit log but the chain's own ``file`` line that starts each file."""
    records = map(json.loads, deployment.audit_log.read_text("utf-8").splitlines())
    return [record for record in records if record["type"] != "file"]
