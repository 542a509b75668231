"""POST /v1/kms/datakey through the app's test client (docs/api.md): the plaintext data key is
in the answer unless the request says `"include_plaintext": false`, and a `context` sent as
null is a data key without context (as left out)."""

from __future__ import annotations

import base64

from kms.app import create_app
from kms.service.keyring import RootKeyring
from kms.settings import Settings
from tests.helpers.tls import client_as


def test_a_data_key_comes_with_its_plaintext_unless_asked_not_to(
    initialised: Settings, keyring: RootKeyring
) -> None:
    client = client_as(create_app(initialised, keyring=keyring))
    assert client.post("/v1/kms/keys", json={"key_id": "k"}).status_code == 201
    default = client.post("/v1/kms/datakey", json={"key_id": "k"})
    assert default.status_code == 200, default.get_json()
    assert len(base64.b64decode(default.get_json()["plaintext"])) == 32
    without = client.post("/v1/kms/datakey", json={"key_id": "k", "include_plaintext": False})
    assert without.status_code == 200, without.get_json()
    assert "plaintext" not in without.get_json() and "ciphertext" in without.get_json()


def test_a_data_key_s_context_sent_as_null_is_no_context(
    initialised: Settings, keyring: RootKeyring
) -> None:
    client = client_as(create_app(initialised, keyring=keyring))
    assert client.post("/v1/kms/keys", json={"key_id": "k"}).status_code == 201
    made = client.post("/v1/kms/datakey", json={"key_id": "k", "context": None})
    assert made.status_code == 200, made.get_json()
    opened = client.post(
        "/v1/kms/decrypt", json={"key_id": "k", "ciphertext": made.get_json()["ciphertext"]}
    )
    assert opened.status_code == 200, opened.get_json()
    assert opened.get_json()["plaintext"] == made.get_json()["plaintext"]
