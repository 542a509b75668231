"""The OpenAPI description: complete, current, and true of the real server's responses.

When one of these fails after you added an endpoint: put ``@documented(...)`` under its
``@operation(...)`` (``kms/api/docs.py`` says what it takes), run ``make openapi``, and add a call
of the endpoint to ``test_every_endpoint_answers_as_documented`` below.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from jsonschema import Draft202012Validator, FormatChecker

from kms.api.docs import documented
from kms.api.openapi import build_spec, openapi_path, render, routes, undocumented_routes
from kms.api.operations import operation
from kms.app import routes_only_app
from tests.helpers.aws import call_every_operation
from tests.helpers.harness import KMSClient, b64, run_kms, unique_key_id

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return build_spec(routes_only_app())


def served_operations(app: Flask) -> set[tuple[str, str]]:
    return {(method.lower(), openapi_path(rule)) for rule, method in routes(app)}


def documented_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in spec["paths"].items() for method in item}


def test_every_route_of_the_url_map_is_documented(spec: dict[str, Any]) -> None:
    app = routes_only_app()
    missing = undocumented_routes(app)
    assert missing == [], (
        "routes without @documented(...) under their @operation(...): " + ", ".join(missing)
    )
    assert served_operations(app) == documented_operations(spec)


def test_a_route_without_documentation_is_named() -> None:
    app = routes_only_app()

    @operation("health", needs_policy=False)
    def forgotten() -> str:
        return ""

    app.add_url_rule("/v1/kms/forgotten/<key_id>", "forgotten", forgotten, methods=["PUT"])
    assert undocumented_routes(app) == ["PUT /v1/kms/forgotten/<key_id> (forgotten)"]
    assert ("put", "/v1/kms/forgotten/{key_id}") not in documented_operations(build_spec(app))
    # Declared, it is described, with its path parameter.
    app.view_functions["forgotten"] = documented("Forgotten", status=204)(forgotten)
    assert undocumented_routes(app) == []
    described = build_spec(app)["paths"]["/v1/kms/forgotten/{key_id}"]["put"]
    assert [parameter["name"] for parameter in described["parameters"]] == ["key_id"]


def test_docs_openapi_json_is_current(spec: dict[str, Any]) -> None:
    assert DOCS.is_file(), "docs/openapi.json is missing: run `make openapi`"
    assert DOCS.read_text(encoding="utf-8") == render(spec), (
        "docs/openapi.json is stale: run `make openapi` and commit it"
    )


def test_kms_openapi_writes_what_make_openapi_commits(tmp_path: Path) -> None:
    result = run_kms("openapi", "--output", str(tmp_path / "openapi.json"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "openapi.json").read_text(encoding="utf-8") == DOCS.read_text(
        encoding="utf-8"
    )
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "kms openapi --output docs/openapi.json" in makefile


def test_the_description_is_openapi_3_1_with_valid_schemas(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    assert spec["components"]["securitySchemes"]["clientCertificate"]["type"] == "mutualTLS"
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, item in spec["paths"].items():
        for method, entry in item.items():
            where = f"{method.upper()} {path}"
            assert entry["summary"], where
            assert any(status.startswith("2") for status in entry["responses"]), where
            assert "500" in entry["responses"], where
            if method in ("post", "put", "patch") and "requestBody" in entry:
                assert {"400", "413", "415"} <= set(entry["responses"]), where
            placeholders = re.findall(r"{([^}]+)}", path)
            names = [p["name"] for p in entry.get("parameters", []) if p["in"] == "path"]
            assert sorted(placeholders) == sorted(names), where


def test_request_bodies_and_queries_are_described(spec: dict[str, Any]) -> None:
    encrypt = spec["paths"]["/v1/kms/encrypt"]["post"]
    body = encrypt["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EncryptRequest"}
    request = spec["components"]["schemas"]["EncryptRequest"]
    assert request["additionalProperties"] is False  # unknown fields are refused
    assert set(request["required"]) == {"key_id", "plaintext"}
    limit = next(
        parameter
        for parameter in spec["paths"]["/v1/kms/keys"]["get"]["parameters"]
        if parameter["name"] == "limit"
    )
    assert limit["in"] == "query"
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)


# -- the real server ----------------------------------------------------------------------------


class ResponseChecker:
    """Validates real responses against the operation and status the description gives them."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.checked: set[tuple[str, str]] = set()

    def check(self, method: str, path: str, response: requests.Response) -> Any:
        entry = self.spec["paths"][path][method]
        status = str(response.status_code)
        assert status in entry["responses"], (
            f"{method.upper()} {path} answered {status}, which its description does not list"
        )
        documented_response = entry["responses"][status]
        content = documented_response.get("content")
        if content is None:
            assert response.content == b"", (method, path, status)
            body = None
        else:
            media_type = response.headers["Content-Type"]
            assert media_type in content, (method, path, media_type, list(content))
            body = response.json() if media_type == "application/json" else response.text
            schema = dict(content[media_type]["schema"])
            schema["components"] = self.spec["components"]
            validator = Draft202012Validator(schema, format_checker=FormatChecker())
            errors = sorted(validator.iter_errors(body), key=lambda error: error.path)
            assert not errors, (
                f"{method.upper()} {path} {status} does not match its description: "
                + "; ".join(error.message for error in errors)
            )
        if response.status_code < 300:
            self.checked.add((method, path))
        return body


def test_the_served_description_is_docs_openapi_json(client: KMSClient) -> None:
    response = client.get("/v1/kms/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.text == DOCS.read_text(encoding="utf-8")


def test_every_endpoint_answers_as_documented(client: KMSClient, spec: dict[str, Any]) -> None:
    checker = ResponseChecker(spec)

    def call(method: str, path: str, url: str | None = None, **kwargs: Any) -> Any:
        return checker.check(method, path, client.request(method.upper(), url or path, **kwargs))

    encrypt_key = unique_key_id("openapi-enc")
    sign_key = unique_key_id("openapi-sig")
    keys = "/v1/kms/keys/{key_id}"
    call("post", "/v1/kms/keys", json={"key_id": encrypt_key})
    call("post", "/v1/kms/keys", json={"key_id": sign_key, "purpose": "sign"})
    call("get", "/v1/kms/keys", params={"limit": 2})
    call("get", keys, f"/v1/kms/keys/{encrypt_key}")
    call("get", keys + "/versions", f"/v1/kms/keys/{encrypt_key}/versions")
    call("get", keys + "/public-key", f"/v1/kms/keys/{sign_key}/public-key")
    call("post", keys + "/rotate", f"/v1/kms/keys/{encrypt_key}/rotate")
    encrypted = call(
        "post", "/v1/kms/encrypt", json={"key_id": encrypt_key, "plaintext": b64(b"x")}
    )
    decrypted = call(
        "post",
        "/v1/kms/decrypt",
        json={"key_id": encrypt_key, "ciphertext": encrypted["ciphertext"]},
    )
    assert decrypted["plaintext"] == b64(b"x")
    data_key = call("post", "/v1/kms/datakey", json={"key_id": encrypt_key, "bytes": 16})
    assert len(base64.b64decode(data_key["plaintext"])) == 16
    wrapped_only = call(
        "post", "/v1/kms/datakey", json={"key_id": encrypt_key, "include_plaintext": False}
    )
    assert "plaintext" not in wrapped_only
    rewrapped = call(
        "post",
        "/v1/kms/rewrap",
        json={"key_id": encrypt_key, "ciphertext": encrypted["ciphertext"]},
    )
    assert rewrapped["version"] == 2
    signed = call("post", "/v1/kms/sign", json={"key_id": sign_key, "message": b64(b"m")})
    verified = call(
        "post",
        "/v1/kms/verify",
        json={"key_id": sign_key, "message": b64(b"m"), "signature": signed["signature"]},
    )
    assert verified == {"valid": True}
    invalid = call(
        "post",
        "/v1/kms/verify",
        json={"key_id": sign_key, "message": b64(b"other"), "signature": signed["signature"]},
    )
    assert invalid == {"valid": False, "error": "signature invalid"}
    call("post", keys + "/recreate", f"/v1/kms/keys/{sign_key}/recreate")
    # Key states (issue 8).
    call(
        "patch",
        keys,
        f"/v1/kms/keys/{encrypt_key}",
        json={"description": "openapi", "labels": {"env": "test"}},
    )
    call("get", "/v1/kms/keys", params={"state": "enabled", "label": "env:test"})
    call("post", keys + "/disable", f"/v1/kms/keys/{encrypt_key}/disable")
    call("post", keys + "/enable", f"/v1/kms/keys/{encrypt_key}/enable")
    call(
        "post",
        keys + "/trim",
        f"/v1/kms/keys/{encrypt_key}/trim",
        json={"min_available_version": 1},
    )
    # Key types (issue 10).
    mac_key = unique_key_id("openapi-mac")
    call("post", "/v1/kms/keys", json={"key_id": mac_key, "purpose": "mac"})
    maced = call("post", "/v1/kms/mac", json={"key_id": mac_key, "message": b64(b"m")})
    mac_verified = call(
        "post",
        "/v1/kms/mac/verify",
        json={"key_id": mac_key, "message": b64(b"m"), "mac": maced["mac"]},
    )
    assert mac_verified == {"valid": True}
    mac_invalid = call(
        "post",
        "/v1/kms/mac/verify",
        json={"key_id": mac_key, "message": b64(b"other"), "mac": maced["mac"]},
    )
    assert mac_invalid == {"valid": False, "error": "mac invalid"}
    random = call("post", "/v1/kms/random", json={"bytes": 16})
    assert len(base64.b64decode(random["random"])) == 16
    call("get", "/healthz")
    call("get", "/readyz")
    call("get", "/metrics")
    call("get", "/v1/kms/openapi.json")
    # Errors have the documented shape too.
    call("get", keys, "/v1/kms/keys/no-such-key")
    call("post", "/v1/kms/encrypt", json={"key_id": encrypt_key, "plaintext": "not base64!"})
    call("post", "/v1/kms/encrypt", data="{}", headers={"Content-Type": "text/plain"})
    call("get", "/v1/kms/keys", params={"limit": 0})
    scheduled = call("delete", keys, f"/v1/kms/keys/{mac_key}", params={"pending_days": 7})
    assert scheduled["state"] == "pending_deletion"
    call("post", keys + "/cancel-deletion", f"/v1/kms/keys/{mac_key}/cancel-deletion")
    for key_id in (encrypt_key, sign_key, mac_key):
        call("delete", keys, f"/v1/kms/keys/{key_id}")

    def aws(name: str, body: dict[str, Any]) -> Any:
        path = f"/v1/aws-kms/{name}"
        headers = {"Content-Type": "application/x-amz-json-1.1"}
        return json.loads(call("post", path, data=json.dumps(body), headers=headers))

    call_every_operation(aws)  # the AWS KMS endpoint (docs/aws-kms.md)
    call_vault_routes(call)  # the Vault Transit routes (docs/vault-transit.md)

    unchecked = documented_operations(spec) - checker.checked - NEVER_SUCCEED
    assert not unchecked, (
        "no real success response was validated for: "
        + ", ".join(sorted(f"{method.upper()} {path}" for method, path in unchecked))
        + " (add a call to this test)"
    )


#: Vault routes kms answers only with Vault's error (export, backup and restore of key material).
NEVER_SUCCEED = {
    ("get", "/v1/transit/export/{kind}/{key_id}"),
    ("get", "/v1/transit/export/{kind}/{key_id}/{version}"),
    ("get", "/v1/transit/backup/{key_id}"),
    ("post", "/v1/transit/restore/{key_id}"),
}


def call_vault_routes(call: Any) -> None:
    """Every Vault Transit route once, as tests/http/test_vault_transit.py's hvac calls them."""
    name, signer, tokens = (unique_key_id(prefix) for prefix in ("oa-vault", "oa-vsig", "oa-vmac"))
    keys = "/v1/transit/keys/{key_id}"
    call("post", keys, f"/v1/transit/keys/{name}", json={})
    call("post", keys, f"/v1/transit/keys/{signer}", json={"type": "ecdsa-p256"})
    call("post", keys, f"/v1/transit/keys/{tokens}", json={"type": "hmac"})
    call("get", keys, f"/v1/transit/keys/{name}")
    call("get", keys, f"/v1/transit/keys/{signer}")
    call("get", "/v1/transit/keys", params={"list": "true"})
    call("post", keys + "/rotate", f"/v1/transit/keys/{name}/rotate")
    call(
        "post",
        keys + "/config",
        f"/v1/transit/keys/{name}/config",
        json={"deletion_allowed": True, "min_decryption_version": 1},
    )
    call("post", keys + "/trim", f"/v1/transit/keys/{name}/trim", json={"min_available_version": 1})
    data = call(
        "post",
        "/v1/transit/encrypt/{key_id}",
        f"/v1/transit/encrypt/{name}",
        json={"plaintext": b64(b"x")},
    )["data"]
    call(
        "post",
        "/v1/transit/decrypt/{key_id}",
        f"/v1/transit/decrypt/{name}",
        json={"ciphertext": data["ciphertext"]},
    )
    call(
        "post",
        "/v1/transit/rewrap/{key_id}",
        f"/v1/transit/rewrap/{name}",
        json={"ciphertext": data["ciphertext"]},
    )
    call(
        "post",
        "/v1/transit/datakey/{kind}/{key_id}",
        f"/v1/transit/datakey/wrapped/{name}",
        json={},
    )
    for path, url in [
        ("/v1/transit/sign/{key_id}", f"/v1/transit/sign/{signer}"),
        ("/v1/transit/sign/{key_id}/{hash_algorithm}", f"/v1/transit/sign/{signer}/sha2-256"),
    ]:
        signature = call("post", path, url, json={"input": b64(b"m")})["data"]["signature"]
    for path, url in [
        ("/v1/transit/verify/{key_id}", f"/v1/transit/verify/{signer}"),
        ("/v1/transit/verify/{key_id}/{hash_algorithm}", f"/v1/transit/verify/{signer}/sha2-256"),
    ]:
        call("post", path, url, json={"input": b64(b"m"), "signature": signature})
    call("post", "/v1/transit/hmac/{key_id}", f"/v1/transit/hmac/{tokens}", json={"input": "eA=="})
    call(
        "post",
        "/v1/transit/hmac/{key_id}/{algorithm}",
        f"/v1/transit/hmac/{tokens}/sha2-256",
        json={"input": "eA=="},
    )
    call("post", "/v1/transit/random", json={})
    call("post", "/v1/transit/random/{count}", "/v1/transit/random/8", json={})
    call("post", "/v1/transit/hash", json={"input": "eA=="})
    call(
        "post", "/v1/transit/hash/{algorithm}", "/v1/transit/hash/sha2-512", json={"input": "eA=="}
    )
    # Errors have Vault's documented shape.
    call("get", keys, "/v1/transit/keys/no-such-key")
    call("get", "/v1/transit/backup/{key_id}", f"/v1/transit/backup/{name}")
    call("get", "/v1/transit/export/{kind}/{key_id}", f"/v1/transit/export/encryption-key/{name}")
    call(
        "get",
        "/v1/transit/export/{kind}/{key_id}/{version}",
        f"/v1/transit/export/encryption-key/{name}/1",
    )
    call("post", "/v1/transit/restore/{key_id}", f"/v1/transit/restore/{name}", json={})
    for key_id in (name, signer, tokens):
        call(
            "post",
            keys + "/config",
            f"/v1/transit/keys/{key_id}/config",
            json={"deletion_allowed": True},
        )
        call("delete", keys, f"/v1/transit/keys/{key_id}")


def test_a_response_that_breaks_its_description_is_caught(spec: dict[str, Any]) -> None:
    class Fake(requests.Response):
        def __init__(self, status: int, body: Any) -> None:
            super().__init__()
            self.status_code = status
            self._content = json.dumps(body).encode()
            self.headers["Content-Type"] = "application/json"

    checker = ResponseChecker(spec)
    good = {"ciphertext": "djE6", "key_id": "k", "version": 1}
    checker.check("post", "/v1/kms/encrypt", Fake(200, good))
    for bad in (
        {**good, "plaintext": "leak"},  # a field nobody documented
        {"ciphertext": "djE6", "key_id": "k"},  # a documented field missing
        {**good, "version": "1"},  # the wrong type
    ):
        with pytest.raises(AssertionError, match="does not match its description"):
            checker.check("post", "/v1/kms/encrypt", Fake(200, bad))
    with pytest.raises(AssertionError, match="does not list"):
        checker.check("post", "/v1/kms/encrypt", Fake(418, {"error": "teapot"}))
