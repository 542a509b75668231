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
    """A connection whose client certificate has the subject ``CN=common_name`` and the
    subject alternative names ``alt_names`` (``(("DNS", name), ("URI", uri))``; by default one
    DNS name equal to the CN). ``reads`` counts how often the certificate was asked for."""

    def __init__(
        self,
        common_name: str = "orchestrator",
        alt_names: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        self.reads = 0
        self._certificate: dict[str, Any] = {
            "subject": ((("commonName", common_name),),),
            "subjectAltName": (("DNS", common_name),) if alt_names is None else alt_names,
        }

    def getpeercert(self) -> dict[str, Any]:
        self.reads += 1
        return self._certificate


def client_as(app: Flask, common_name: str = "orchestrator") -> FlaskClient:
    """A test client whose every request comes over a connection of ``common_name``'s."""
    client = app.test_client()
    client.environ_base["gunicorn.socket"] = FakeTLSSocket(common_name)
    return client
