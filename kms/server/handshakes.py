"""The log line of a TLS handshake refused for the client's certificate.

kms requires a client certificate signed by a CA of ``server.ca_cert`` (and not revoked, with
``server.crl_file``). A client without one sees only its TLS library's words (curl:
``getpeername() failed``, or an alert); the server says why, in one log line per refusal kind:

- ``no client certificate``: the client sent none (OpenSSL: PEER_DID_NOT_RETURN_A_CERTIFICATE);
- ``untrusted client certificate (<OpenSSL's verify message>)``: one that does not verify (no CA
  of the bundle signed it, expired, revoked...).

Other handshake failures (a port scan, a plain-HTTP request, a client that gives up) stay at
DEBUG, as before. A worker logs at most one line per kind every ``LOG_INTERVAL_SECONDS``; the next
line says how many were refused in between, so a client that reconnects in a loop costs the log
one line per kind and interval, whatever its rate. The values in the line (the address, OpenSSL's
message) are escaped with ``escape_log_value``: a line never spans lines or closes a quote.
"""

from __future__ import annotations

import ssl

from kms.server.logs import escape_log_value

#: How often, at most, one worker logs refused handshakes of one kind.
LOG_INTERVAL_SECONDS = 10.0
NO_CERTIFICATE = "no client certificate"
UNTRUSTED = "untrusted client certificate"
#: OpenSSL's reasons for a client that sent no certificate (TLS 1.2 and 1.3 alike, server side).
_NO_CERTIFICATE_REASONS = frozenset(
    {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"}
)


def refusal_kind(error: BaseException) -> tuple[str, str] | None:
    """``(kind, description)`` of a handshake refused for the client's certificate; None for any
    other failure."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or error.reason or "verify failed"
        return UNTRUSTED, f"{UNTRUSTED} ({detail})"
    if isinstance(error, ssl.SSLError) and error.reason in _NO_CERTIFICATE_REASONS:
        return NO_CERTIFICATE, NO_CERTIFICATE
    return None


class RefusalLog:
    """Which refused handshakes one worker logs: the first of each kind, then at most one per
    ``LOG_INTERVAL_SECONDS``, each with the count of those left unlogged since the last."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self._interval = interval
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def line(self, error: BaseException, ip: str, now: float) -> str | None:
        """The line to log for ``error`` from ``ip`` at ``now`` (monotonic), or None: not a
        refusal of the certificate, or one of a kind logged less than an interval ago."""
        refusal = refusal_kind(error)
        if refusal is None:
            return None
        kind, description = refusal
        last = self._logged_at.get(kind)
        if last is not None and now - last < self._interval:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return None
        self._logged_at[kind] = now
        unlogged = self._unlogged.pop(kind, 0)
        more = f" ({unlogged} more refused since the last line)" if unlogged else ""
        return (
            f"TLS handshake from ip={escape_log_value(ip)} refused: "
            f"{escape_log_value(description)}{more}"
        )
