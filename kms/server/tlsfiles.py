"""What the server's TLS files must hold, checked before OpenSSL is given them.

OpenSSL's own errors name no file (``[X509: KEY_VALUES_MISMATCH] key values mismatch``), so the
files are read here first and any problem becomes one ``ConfigurationError`` naming the setting,
the file and what is wrong with it. At start that is kms's one line and exit 1; at a reload
(``kms.server.tls``) it is the one log line that says why the previous files stay in use.

- ``server.server_cert``: PEM, certificates only (the server's first, then its chain).
- ``server.server_key``: one unencrypted PEM private key, the public key of the certificate's.
- ``server.ca_cert``: PEM, certificates only, at least one.
- ``server.crl_file`` (optional): PEM, CRLs only (a certificate in it would become trusted, so
  anything else is refused), each signed by a CA of ``server.ca_cert``, each current: its
  ``lastUpdate`` not in the future and its ``nextUpdate`` not in the past. An expired CRL is
  refused rather than ignored: OpenSSL would refuse every client whose CA it covers.

Messages name files and what kind of PEM block they hold, never any of a key's content.

At start, a server certificate that has expired, or expires within ``EXPIRY_WARNING`` (30 days),
is one warning line (``expiry_warning``): kms still serves with it (the operator may be renewing
it right now, and the files are reloaded when replaced), but clients refuse an expired one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from kms.errors import ConfigurationError

#: No TLS file kms reads is anywhere near this; a larger one is not read into memory.
MAX_FILE_BYTES = 16 * 1024 * 1024

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_KEY_LABELS = {b"PRIVATE KEY", b"EC PRIVATE KEY", b"RSA PRIVATE KEY", b"DSA PRIVATE KEY"}
_ENCRYPTED_KEY_LABEL = b"ENCRYPTED PRIVATE KEY"


#: A server certificate this close to its end is warned about at start.
EXPIRY_WARNING = timedelta(days=30)
#: What the warning suggests for kms's own development certificates (kms.devcerts).
RENEW_HINT = "kms dev-certs --renew DIR renews development certificates"


@dataclass(frozen=True)
class TLSFile:
    """One configured file: the setting that names it and its path."""

    setting: str
    path: Path


@dataclass(frozen=True)
class TLSFiles:
    server_cert: TLSFile
    server_key: TLSFile
    ca_cert: TLSFile
    crl_file: TLSFile | None = None

    @property
    def paths(self) -> list[Path]:
        files = [self.server_cert, self.server_key, self.ca_cert]
        if self.crl_file is not None:
            files.append(self.crl_file)
        return [file.path for file in files]


def _refuse(file: TLSFile, problem: str) -> ConfigurationError:
    return ConfigurationError(f"{file.setting}: {file.path} {problem}")


def _read(file: TLSFile) -> bytes:
    try:
        with open(file.path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise _refuse(file, f"cannot be read: {error.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _refuse(file, f"is larger than {MAX_FILE_BYTES} bytes")
    return data


def _describe(label: bytes) -> str:
    if label in _KEY_LABELS or label == _ENCRYPTED_KEY_LABEL:
        return "a private key"
    if label == b"CERTIFICATE":
        return "a certificate"
    if label == b"X509 CRL":
        return "a CRL"
    return f"a PEM block of type {label.decode('ascii')!r}"


def _blocks(file: TLSFile, data: bytes, wanted: str) -> list[tuple[bytes, bytes]]:
    blocks = [(match.group(1), match.group(0)) for match in _PEM_BLOCK.finditer(data)]
    if not blocks:
        raise _refuse(file, f"is not in PEM format; it must hold {wanted}")
    return blocks


def _only(file: TLSFile, blocks: list[tuple[bytes, bytes]], label: bytes, wanted: str) -> None:
    for found, _ in blocks:
        if found == b"X509 CRL" and label == b"CERTIFICATE":
            # OpenSSL would load it and never check it: revoked certificates would get in.
            raise _refuse(
                file, "holds a CRL, which would not be checked there: give CRLs in server.crl_file"
            )
        if found != label:
            raise _refuse(file, f"holds {_describe(found)}; it must hold {wanted} only")


def read_certificates(file: TLSFile) -> list[x509.Certificate]:
    wanted = "PEM certificates"
    blocks = _blocks(file, _read(file), wanted)
    _only(file, blocks, b"CERTIFICATE", wanted)
    try:
        return [x509.load_pem_x509_certificate(block) for _, block in blocks]
    except ValueError:
        raise _refuse(file, "holds a certificate that cannot be parsed") from None


def read_private_key(file: TLSFile) -> PrivateKeyTypes:
    wanted = "one unencrypted PEM private key"
    blocks = _blocks(file, _read(file), wanted)
    if any(label == _ENCRYPTED_KEY_LABEL for label, _ in blocks):
        raise _refuse(file, "holds an encrypted private key; kms needs an unencrypted one")
    keys = [block for label, block in blocks if label in _KEY_LABELS]
    if len(keys) != 1:
        found = ", ".join(sorted({_describe(label) for label, _ in blocks}))
        raise _refuse(file, f"holds {len(keys)} private keys ({found}); it must hold {wanted}")
    try:
        return serialization.load_pem_private_key(keys[0], password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Not the exception's text: nothing about a key's content reaches a message.
        raise _refuse(file, "holds a private key that cannot be parsed") from None


def read_crls(
    file: TLSFile, authorities: Sequence[x509.Certificate], ca_file: TLSFile, now: datetime
) -> list[x509.CertificateRevocationList]:
    wanted = "PEM CRLs"
    blocks = _blocks(file, _read(file), wanted)
    _only(file, blocks, b"X509 CRL", wanted)
    crls: list[x509.CertificateRevocationList] = []
    for _, block in blocks:
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError:
            raise _refuse(file, "holds a CRL that cannot be parsed") from None
        issuer = crl.issuer.rfc4514_string()
        signers = [ca for ca in authorities if ca.subject == crl.issuer]
        if not any(_signed_by(crl, ca) for ca in signers):
            raise _refuse(
                file,
                f"holds a CRL of {issuer} that no CA of {ca_file.setting} ({ca_file.path}) signed",
            )
        if crl.last_update_utc > now:
            raise _refuse(
                file,
                f"holds a CRL of {issuer} that is not valid before "
                f"{crl.last_update_utc.isoformat()}",
            )
        next_update = crl.next_update_utc
        if next_update is not None and next_update < now:
            raise _refuse(
                file,
                f"holds a CRL of {issuer} that expired at {next_update.isoformat()}: "
                "publish a current CRL",
            )
        crls.append(crl)
    return crls


def _signed_by(crl: x509.CertificateRevocationList, authority: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(authority.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def check_tls_files(files: TLSFiles, now: datetime | None = None) -> None:
    """Raise ``ConfigurationError`` naming the file unless the files are usable together."""
    chain = read_certificates(files.server_cert)
    key = read_private_key(files.server_key)
    if key.public_key() != chain[0].public_key():
        raise _refuse(
            files.server_key,
            f"does not match the certificate in {files.server_cert.path} "
            f"({files.server_cert.setting})",
        )
    authorities = read_certificates(files.ca_cert)
    if files.crl_file is not None:
        read_crls(files.crl_file, authorities, files.ca_cert, now or datetime.now(UTC))


def expiry_warning(file: TLSFile, now: datetime | None = None) -> str | None:
    """The start-up warning for the server certificate in ``file`` (the first certificate of
    the chain) if it has expired or expires within ``EXPIRY_WARNING``; None otherwise, and None
    for a file that cannot be read now (its check at start names that)."""
    try:
        certificate = read_certificates(file)[0]
    except ConfigurationError:
        return None
    now = now or datetime.now(UTC)
    expires = certificate.not_valid_after_utc
    when = expires.strftime("%Y-%m-%d %H:%M UTC")
    named = f"the server certificate {file.path} ({file.setting})"
    if expires <= now:
        return f"kms: {named} expired on {when}: clients refuse it; renew it ({RENEW_HINT})"
    if expires - now <= EXPIRY_WARNING:
        days = (expires - now).days
        left = "less than a day" if days == 0 else f"{days} day{'s' if days != 1 else ''}"
        return f"kms: {named} expires on {when}, in {left}: renew it ({RENEW_HINT})"
    return None
