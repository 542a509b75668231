"""The TLS side of a request for the Flask test client, as gunicorn hands it to kms.

gunicorn puts the connection's socket in ``environ["gunicorn.socket"]``; kms asks it for the
client certificate (``getpeercert()``, decoded as ``ssl.SSLSocket`` decodes it). The real
handshake is tested over real gunicorn in tests/http.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient


class FakeTLSSocket:
    """A connection whose client certificate has the subject ``CN=common_name`` (a tuple: one
    CN attribute each, in order) and the subject alternative names ``alt_names``
    (``(("DNS", name), ("URI", uri))``; by default one DNS name equal to the first CN), the serial
    number ``serial`` and, as its DER form, ``der`` (so its SHA-256 fingerprint is that of
    ``der``). ``reads`` counts how often the decoded certificate was asked for."""

    def __init__(
        self,
        common_name: str | tuple[str, ...] = "orchestrator",
        alt_names: tuple[tuple[str, str], ...] | None = None,
        serial: int = 0x1001,
        der: bytes = b"fake DER certificate",
    ) -> None:
        self.reads = 0
        common_names = (common_name,) if isinstance(common_name, str) else common_name
        self.der = der
        self._certificate: dict[str, Any] = {
            "subject": tuple((("commonName", name),) for name in common_names),
            "subjectAltName": (("DNS", common_names[0]),) if alt_names is None else alt_names,
            "serialNumber": f"{serial:04X}",
        }

    def getpeercert(self, binary_form: bool = False) -> Any:
        if binary_form:
            return self.der
        self.reads += 1
        return self._certificate


def client_as(app: Flask, common_name: str = "orchestrator") -> FlaskClient:
    """A test client whose every request comes over a connection of ``common_name``'s."""
    client = app.test_client()
    client.environ_base["gunicorn.socket"] = FakeTLSSocket(common_name)
    return client
