"""A create that names no key_id needs a rule whose keys match every key (README, Authorization).

kms makes up a UUID for such a key, so no glob narrower than ``*`` can be said to cover it: the
policy sees the key ``""``, which only ``*`` matches. Checked on the policy itself and through the
app's own hooks (Flask's test client, a fake TLS socket; no server).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from kms.api.policy import Policy, load_policy
from kms.app import REPOSITORY, create_app
from kms.service.keyring import RootKeyring
from kms.settings import Settings
from tests.helpers.tls import client_as

POLICY = """\
clients:
  admin:
    - operations: ["*"]
      keys: ["*"]
  billing:
    - operations: ["keys:create", "keys:read"]
      keys: ["billing-*"]
  creator:
    - operations: ["keys:create"]
      keys: ["*"]
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture
def policy(policy_file: Path) -> Policy:
    return load_policy(policy_file)


@pytest.fixture
def app(initialised: Settings, keyring: RootKeyring, policy_file: Path) -> Iterator[Flask]:
    app = create_app(initialised.with_overrides(policy_file=policy_file), keyring=keyring)
    yield app
    app.extensions[REPOSITORY].close()


def key_ids(app: Flask) -> list[str]:
    listed = client_as(app, "admin").get("/v1/kms/keys")
    assert listed.status_code == 200
    return [key["key_id"] for key in listed.get_json()]


def test_the_policy_lets_only_a_rule_for_every_key_create_without_a_key_id(
    policy: Policy,
) -> None:
    # "" is what the app asks about for a body that names no key.
    assert not policy.allows("billing", "keys:create", "")
    assert policy.allows("billing", "keys:create", "billing-1")
    assert policy.allows("creator", "keys:create", "")
    assert policy.allows("admin", "keys:create", "")
    assert not policy.allows("nobody", "keys:create", "")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"key_id": None},
        {"key_id": 7},  # not a string: names no usable key either
        {"purpose": "sign", "algorithm": "Ed25519"},
    ],
)
def test_a_glob_only_caller_cannot_create_a_key_without_a_key_id(
    app: Flask, body: dict[str, Any]
) -> None:
    response = client_as(app, "billing").post("/v1/kms/keys", json=body)
    assert response.status_code == 403
    assert response.get_json() == {"error": "forbidden"}
    assert key_ids(app) == []


def test_a_glob_only_caller_creates_the_keys_its_glob_names(app: Flask) -> None:
    billing = client_as(app, "billing")
    assert billing.post("/v1/kms/keys", json={"key_id": "billing-1"}).status_code == 201
    assert billing.post("/v1/kms/keys", json={"key_id": "payroll-1"}).status_code == 403
    assert key_ids(app) == ["billing-1"]


@pytest.mark.parametrize("caller", ["admin", "creator"])
def test_a_rule_for_every_key_creates_a_key_without_a_key_id(app: Flask, caller: str) -> None:
    response = client_as(app, caller).post("/v1/kms/keys", json={})
    assert response.status_code == 201
    created = response.get_json()["key_id"]
    assert uuid.UUID(created).version == 4
    assert key_ids(app) == [created]
