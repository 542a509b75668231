"""The one place that reads the TLS peer certificate.

Identity comes from the verified TLS session only: gunicorn exposes the connection as
``environ["gunicorn.socket"]`` and the handshake already checked the chain against the configured
CA. No request header can claim or change an identity.

It sits with the serving machinery because both sides read it: the worker names the caller in
the access line of a request it refuses before the app sees it, and the app's policy decides
what a caller may do.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from dataclasses import dataclass
from typing import Any

from kms.errors import Unauthenticated

ENVIRON_KEY = "kms.caller"
#: The identity the policy gave the request (kms.api.policy), for the access log.
IDENTITY_ENVIRON_KEY = "kms.identity"
#: SAN kinds (as ``getpeercert`` names them) that can identify a caller to the policy, and the
#: type each name has in the policy file.
IDENTITY_SAN_KINDS = {"DNS": "dns", "URI": "uri"}


@dataclass(frozen=True)
class Caller:
    """The names in a verified client certificate, and what identifies the certificate itself.

    ``common_names`` holds every subject CN in certificate order: a certificate may carry more
    than one, and the policy refuses such a certificate rather than choose among them.
    ``serial`` and ``sha256`` (the fingerprint of the DER certificate) are what a policy's deny
    list names; None when the connection did not give them.
    """

    common_names: tuple[str, ...]
    subject_alt_names: tuple[str, ...]
    serial: int | None = None
    sha256: bytes | None = None

    def __str__(self) -> str:
        names = ",".join(self.subject_alt_names)
        subject = ",".join(f"CN={name}" for name in self.common_names) or "CN=-"
        return subject + (f";SAN={names}" if names else "")

    def names(self) -> tuple[tuple[str, str], ...]:
        """The typed names a policy may use for this caller, in order: each CN (``cn``), then
        each DNS (``dns``) and URI (``uri``) SAN in certificate order. IP SANs are not names."""
        sans = tuple(
            (IDENTITY_SAN_KINDS[kind], value)
            for kind, _, value in (entry.partition(":") for entry in self.subject_alt_names)
            if kind in IDENTITY_SAN_KINDS
        )
        return tuple(("cn", name) for name in self.common_names) + sans


def caller_from_peer_certificate(certificate: dict[str, Any], der: bytes | None = None) -> Caller:
    """Build a Caller from ``ssl.SSLSocket.getpeercert()``'s decoded form (and, for the
    fingerprint, its binary form ``der``)."""
    common_names = tuple(
        value
        for rdn in certificate.get("subject", ())
        for attribute, value in rdn
        if attribute == "commonName"
    )
    sans = tuple(f"{kind}:{value}" for kind, value in certificate.get("subjectAltName", ()))
    serial_text = certificate.get("serialNumber")
    try:
        serial = int(serial_text, 16) if isinstance(serial_text, str) else None
    except ValueError:
        serial = None
    return Caller(
        common_names=common_names,
        subject_alt_names=sans,
        serial=serial,
        sha256=hashlib.sha256(der).digest() if der else None,
    )


#: The caller of each open connection, found at its first request. A connection's peer
#: certificate cannot change: kms's worker refuses TLS 1.2 renegotiation
#: (``OP_NO_RENEGOTIATION``) and TLS 1.3 has none (no post-handshake authentication is asked
#: for). Decoding the certificate (``getpeercert``) costs about 12 us, on every kept-alive request.
#: Weak keys: the entry goes with the socket.
_CALLER_OF_CONNECTION: weakref.WeakKeyDictionary[Any, Caller] = weakref.WeakKeyDictionary()


def caller_from_environ(environ: dict[str, Any]) -> Caller:
    socket = environ.get("gunicorn.socket")
    caller = _known_caller(socket)
    if caller is not None:
        return caller
    getpeercert = getattr(socket, "getpeercert", None)
    if getpeercert is None:
        raise Unauthenticated()
    certificate = getpeercert()
    if not certificate:
        raise Unauthenticated()
    # The DER form too, for the fingerprint a policy's deny list may name (once per connection).
    caller = caller_from_peer_certificate(certificate, getpeercert(binary_form=True))
    with contextlib.suppress(TypeError):  # a socket that takes no weak reference: not kept
        _CALLER_OF_CONNECTION[socket] = caller
    return caller


def _known_caller(socket: Any) -> Caller | None:
    if socket is None:
        return None
    try:
        return _CALLER_OF_CONNECTION.get(socket)
    except TypeError:  # not weakly referenceable (or not hashable)
        return None
