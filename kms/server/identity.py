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
import weakref
from dataclasses import dataclass
from typing import Any

from kms.errors import Unauthenticated

ENVIRON_KEY = "kms.caller"
#: SAN kinds (as ``getpeercert`` names them) that can identify a caller to the policy.
IDENTITY_SAN_KINDS = ("DNS", "URI")


@dataclass(frozen=True)
class Caller:
    common_name: str | None
    subject_alt_names: tuple[str, ...]

    def __str__(self) -> str:
        names = ",".join(self.subject_alt_names)
        return f"CN={self.common_name or '-'}" + (f";SAN={names}" if names else "")

    def names(self) -> tuple[str, ...]:
        """The names a policy may use for this caller: the CN, then each DNS and URI SAN."""
        sans = tuple(
            value
            for kind, _, value in (entry.partition(":") for entry in self.subject_alt_names)
            if kind in IDENTITY_SAN_KINDS
        )
        return ((self.common_name,) if self.common_name else ()) + sans


def caller_from_peer_certificate(certificate: dict[str, Any]) -> Caller:
    """Build a Caller from ``ssl.SSLSocket.getpeercert()``'s decoded form."""
    common_name = None
    for rdn in certificate.get("subject", ()):
        for attribute, value in rdn:
            if attribute == "commonName":
                common_name = value
    sans = tuple(f"{kind}:{value}" for kind, value in certificate.get("subjectAltName", ()))
    return Caller(common_name=common_name, subject_alt_names=sans)


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
    certificate = getpeercert() if getpeercert is not None else None
    if not certificate:
        raise Unauthenticated()
    caller = caller_from_peer_certificate(certificate)
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
