"""No audit, no service: a request whose line cannot be written is refused (README, Audit log;
``kms.api.audit``).

The refusal is 503 ``{"error": "audit log unavailable, request refused"}``: a change is refused
before the view runs, when its arrival line fails, so nothing is created, changed or destroyed;
a use of a key is refused when its one line fails, after the view, so no ciphertext, plaintext,
signature or MAC is returned (``test_audit_one_line.py`` seals the log between the two). In
process, with Flask's test client and a fake TLS socket; the audit file is sealed as an operator
seals it (no write bit, which kms honours even for root) or replaced by something no one can
append to (a directory).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from flask.testing import FlaskClient

REFUSAL = {"error": "audit log unavailable, request refused"}
PLAINTEXT = base64.b64encode(b"audited or not at all").decode()
MESSAGE = base64.b64encode(b"a message").decode()


def read_only(path: Path) -> Callable[[], None]:
    os.chmod(path, 0o444)
    return lambda: os.chmod(path, 0o600)


def a_directory(path: Path) -> Callable[[], None]:
    kept = path.with_name("audit.kept")
    path.rename(kept)
    path.mkdir()

    def restore() -> None:
        path.rmdir()
        kept.rename(path)

    return restore


SEALS = {"read-only file": read_only, "directory": a_directory}


@pytest.mark.parametrize("seal", SEALS.values(), ids=SEALS.keys())
def test_requests_are_refused_and_change_nothing_while_the_audit_log_is_unwritable(
    audited_client: FlaskClient, audit_path: Path, seal: Callable[[Path], Callable[[], None]]
) -> None:
    for key_id, purpose in (("data", "encrypt"), ("signer", "sign"), ("hasher", "mac")):
        created = audited_client.post("/v1/kms/keys", json={"key_id": key_id, "purpose": purpose})
        assert created.status_code == 201
    encrypted = audited_client.post(
        "/v1/kms/encrypt", json={"key_id": "data", "plaintext": PLAINTEXT}
    )
    ciphertext = encrypted.get_json()["ciphertext"]
    before = audited_client.get("/v1/kms/keys/data").get_json()
    audited = audit_path.read_bytes()

    restore = seal(audit_path)
    try:
        requests = {
            "create": audited_client.post("/v1/kms/keys", json={"key_id": "new"}),
            "rotate": audited_client.post("/v1/kms/keys/data/rotate"),
            "recreate": audited_client.post("/v1/kms/keys/data/recreate"),
            "update": audited_client.patch("/v1/kms/keys/data", json={"description": "changed"}),
            "disable": audited_client.post("/v1/kms/keys/data/disable"),
            "delete": audited_client.delete("/v1/kms/keys/signer"),
            "read": audited_client.get("/v1/kms/keys/data"),
            "encrypt": audited_client.post(
                "/v1/kms/encrypt", json={"key_id": "data", "plaintext": PLAINTEXT}
            ),
            "decrypt": audited_client.post(
                "/v1/kms/decrypt", json={"key_id": "data", "ciphertext": ciphertext}
            ),
            "datakey": audited_client.post("/v1/kms/datakey", json={"key_id": "data"}),
            "sign": audited_client.post(
                "/v1/kms/sign", json={"key_id": "signer", "message": MESSAGE}
            ),
            "mac": audited_client.post(
                "/v1/kms/mac", json={"key_id": "hasher", "message": MESSAGE}
            ),
            "random": audited_client.post("/v1/kms/random", json={"bytes": 16}),
        }
    finally:
        restore()

    answered = {name: (r.status_code, r.get_json()) for name, r in requests.items()}
    assert answered == dict.fromkeys(requests, (503, REFUSAL))
    assert audit_path.read_bytes() == audited  # not even half a line
    # The log writable again, nothing was done while it was not.
    assert audited_client.get("/v1/kms/keys/data").get_json() == before
    assert audited_client.get("/v1/kms/keys/new").status_code == 404
    assert audited_client.get("/v1/kms/keys/signer").status_code == 200
    assert [key["key_id"] for key in audited_client.get("/v1/kms/keys").get_json()] == [
        "data",
        "hasher",
        "signer",
    ]


def test_the_same_requests_are_served_and_audited_when_the_log_is_writable(
    audited_client: FlaskClient, audit_path: Path
) -> None:
    """The control: the refusal above comes from the audit log alone."""
    assert audited_client.post("/v1/kms/keys", json={"key_id": "data"}).status_code == 201
    encrypted = audited_client.post(
        "/v1/kms/encrypt", json={"key_id": "data", "plaintext": PLAINTEXT}
    )
    assert encrypted.status_code == 200
    lines = audit_path.read_bytes().splitlines()
    # The file's first line, the creation's arrival and answer, the encryption's one line.
    assert [json.loads(line)["type"] for line in lines] == [
        "file",
        "request",
        "response",
        "response",
    ]
