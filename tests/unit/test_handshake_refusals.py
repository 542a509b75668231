"""Which refused TLS handshakes are logged, and how (kms.server.handshakes): one line per kind
and interval, the refusals in between counted, every value escaped."""

from __future__ import annotations

import ssl

from kms.server.handshakes import LOG_INTERVAL_SECONDS, RefusalLog, refusal_kind


def no_certificate() -> ssl.SSLError:
    error = ssl.SSLError(1, "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return")
    error.reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    return error


def untrusted(message: str = "unable to get local issuer certificate") -> ssl.SSLError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    error.verify_message = message
    return error


def test_only_refusals_of_the_client_certificate_are_kinds() -> None:
    assert refusal_kind(no_certificate()) == ("no client certificate", "no client certificate")
    assert refusal_kind(untrusted()) == (
        "untrusted client certificate",
        "untrusted client certificate (unable to get local issuer certificate)",
    )
    wrong_version = ssl.SSLError(1, "wrong version number")
    wrong_version.reason = "WRONG_VERSION_NUMBER"
    assert refusal_kind(wrong_version) is None
    assert refusal_kind(ConnectionResetError()) is None


def test_one_line_per_kind_and_interval_and_the_rest_counted() -> None:
    log = RefusalLog()
    first = log.line(no_certificate(), "10.0.0.1", now=100.0)
    assert first == "TLS handshake from ip=10.0.0.1 refused: no client certificate"
    assert [log.line(no_certificate(), "10.0.0.2", now=100.0 + n) for n in range(5)] == [None] * 5
    # Another kind is not held back by the first.
    assert log.line(untrusted(), "10.0.0.3", now=101.0) == (
        "TLS handshake from ip=10.0.0.3 refused: untrusted client certificate "
        "(unable to get local issuer certificate)"
    )
    later = log.line(no_certificate(), "10.0.0.4", now=100.0 + LOG_INTERVAL_SECONDS)
    assert later == (
        "TLS handshake from ip=10.0.0.4 refused: no client certificate (5 more refused since the "
        "last line)"
    )


def test_every_value_in_the_line_is_escaped() -> None:
    line = RefusalLog().line(untrusted('x")\n[ERROR] forged \u2028'), 'ip"\n', now=0.0)
    assert line == (
        'TLS handshake from ip=ip\\"\\n refused: untrusted client certificate (x\\")\\n[ERROR] '
        "forged \\u2028)"
    )
    assert line is not None and line.isprintable()
