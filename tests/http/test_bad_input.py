"""Bad requests: each gets its exact 4xx status and ``{"error": ...}``, and changes nothing.

Every case runs between two snapshots of the database rows (keys, key_versions, kms_metadata),
read straight from the server's SQLite file; they must be equal.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.helpers.harness import (
    REQUEST_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    b64,
    create_key,
    database_unchanged,
    expect_error,
    expect_json,
    expect_no_content,
    unb64,
    unique_key_id,
)

pytestmark = pytest.mark.slow

ENC = "bad-input-aes"
ENC2 = "bad-input-aes-2"
SIG = "bad-input-ecdsa"
MISSING = "bad-input-no-such-key"
NOT_FOUND = f'record not found: key "{MISSING}"'

NOT_JSON = "request body is not valid JSON"
NOT_OBJECT = "request body must be a JSON object"
NOT_JSON_TYPE = "Content-Type must be application/json"
BAD_KEY_ID = "key_id must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
NO_ROUTE = "not found"
NO_METHOD = "method not allowed"
TOO_LARGE = "request body too large"
INVALID_CIPHERTEXT = "invalid ciphertext"
NOT_BASE64 = "must be valid standard base64"
LIMIT_RANGE = "limit: must be between 1 and 1000"
LIMIT_TYPE = "limit: must be an integer"
MAX_BODY_BYTES = 1024 * 1024  # the default server.max_body_bytes
ALGORITHM_NAMES = (
    "AES-256-GCM, ChaCha20-Poly1305, ECDSA-P256, ECDSA-P384, Ed25519, HMAC-SHA256, HMAC-SHA512, "
    "RSA-2048, RSA-3072, RSA-4096, RSA-OAEP-2048, RSA-OAEP-3072, RSA-OAEP-4096"
)


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    status: int
    error: str
    body: bytes | None = None
    content_type: str | None = "application/json"

    def send(self, client: KMSClient) -> requests.Response:
        headers = {} if self.content_type is None else {"Content-Type": self.content_type}
        return client.request(self.method, self.path, data=self.body, headers=headers)


def raw(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def create(case_id: str, document: Any, status: int, error: str) -> Case:
    return Case(case_id, "POST", "/v1/kms/keys", status, error, raw(document))


def post(case_id: str, path: str, document: Any, status: int, error: str) -> Case:
    return Case(case_id, "POST", path, status, error, raw(document))


def bare(case_id: str, method: str, path: str, status: int, error: str) -> Case:
    return Case(case_id, method, path, status, error, body=None, content_type=None)


def patch(case_id: str, document: Any, status: int, error: str) -> Case:
    return Case(case_id, "PATCH", f"/v1/kms/keys/{ENC}", status, error, raw(document))


LABEL_NAMES = "labels: names must be 1-63 characters of a-z 0-9 _ . -"


HI = b64(b"hi")
DEEP = b'{"key_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
LONG_ID = "a" * 129

BODY_CASES = [
    # Not JSON at all, or not a JSON object.
    Case("invalid-json", "POST", "/v1/kms/keys", 400, NOT_JSON, b'{"key_id": '),
    Case("empty-body", "POST", "/v1/kms/keys", 400, NOT_JSON, b""),
    Case("trailing-garbage", "POST", "/v1/kms/keys", 400, NOT_JSON, b'{"key_id": "a"} x'),
    Case("invalid-utf8", "POST", "/v1/kms/keys", 400, NOT_JSON, b'{"key_id": "\xff"}'),
    Case("nested-100000", "POST", "/v1/kms/keys", 400, NOT_JSON, DEEP),
    Case("duplicate-field", "POST", "/v1/kms/keys", 400, NOT_JSON, b'{"key_id":"a","key_id":"b"}'),
    Case("nan", "POST", "/v1/kms/keys", 400, NOT_JSON, b'{"key_id": NaN}'),
    Case("infinity", "POST", "/v1/kms/keys", 400, NOT_JSON, b'{"key_id": -Infinity}'),
    Case("json-array", "POST", "/v1/kms/keys", 400, NOT_OBJECT, b"[]"),
    Case("json-string", "POST", "/v1/kms/keys", 400, NOT_OBJECT, b'"device123"'),
    Case(
        "lone-surrogate",
        "POST",
        "/v1/kms/keys",
        400,
        "request body holds an invalid unicode escape",
        b'{"key_id": "\\ud800"}',
    ),
    # Not declared as JSON.
    Case("text-plain", "POST", "/v1/kms/keys", 415, NOT_JSON_TYPE, b"{}", "text/plain"),
    Case("no-content-type", "POST", "/v1/kms/keys", 415, NOT_JSON_TYPE, b"{}", None),
    Case(
        "form",
        "POST",
        "/v1/kms/encrypt",
        415,
        NOT_JSON_TYPE,
        b"key_id=bad-input-aes",
        "application/x-www-form-urlencoded",
    ),
    # Fields: unknown, missing, of the wrong type.
    create("unknown-field", {"key_id": "x1", "colour": "red"}, 400, "colour: Unknown field."),
    create("key_id-int", {"key_id": 5}, 400, "key_id: Not a valid string."),
    create("purpose-list", {"purpose": []}, 400, "purpose: Not a valid string."),
    create("purpose-null", {"purpose": None}, 400, "purpose: Field may not be null."),
    create("algorithm-object", {"algorithm": {}}, 400, "algorithm: Not a valid string."),
    create(
        "unknown-purpose", {"purpose": "wrap"}, 400, "purpose must be one of: encrypt, sign, mac"
    ),
    create(
        "sign-with-aes",
        {"purpose": "sign", "algorithm": "AES-256-GCM"},
        400,
        "algorithm AES-256-GCM cannot be used for purpose sign",
    ),
    create(
        "encrypt-with-ed25519",
        {"purpose": "encrypt", "algorithm": "Ed25519"},
        400,
        "algorithm Ed25519 cannot be used for purpose encrypt",
    ),
    *(
        create(
            f"algorithm-{name or 'empty'}",
            {"algorithm": name},
            400,
            f"unknown algorithm; expected one of: {ALGORITHM_NAMES}",
        )
        for name in ("DES", "aes-256-gcm", "")
    ),
    create("duplicate-key-id", {"key_id": ENC}, 409, "key already exists"),
    *(
        create(f"body-key_id-{label}", {"key_id": key_id}, 400, BAD_KEY_ID)
        for label, key_id in [
            ("dot-dot-slash", "../x"),
            ("nul", "a\x00b"),
            ("129-chars", LONG_ID),
            ("trailing-newline", "abc\n"),
            ("empty", ""),
            ("leading-dash", "-abc"),
            ("space", "a b"),
            ("non-ascii", "clé"),
        ]
    ),
    post(
        "encrypt-key_id-path",
        "/v1/kms/encrypt",
        {"key_id": "../x", "plaintext": HI},
        400,
        BAD_KEY_ID,
    ),
    post("sign-key_id-nul", "/v1/kms/sign", {"key_id": "a\x00", "message": HI}, 400, BAD_KEY_ID),
    post(
        "encrypt-empty",
        "/v1/kms/encrypt",
        {},
        400,
        "key_id: Missing data for required field.; plaintext: Missing data for required field.",
    ),
    post(
        "encrypt-no-plaintext",
        "/v1/kms/encrypt",
        {"key_id": ENC},
        400,
        "plaintext: Missing data for required field.",
    ),
    post(
        "decrypt-no-ciphertext",
        "/v1/kms/decrypt",
        {"key_id": ENC},
        400,
        "ciphertext: Missing data for required field.",
    ),
    post(
        "sign-no-message",
        "/v1/kms/sign",
        {"key_id": SIG},
        400,
        "message: Missing data for required field.",
    ),
    post(
        "verify-no-signature",
        "/v1/kms/verify",
        {"key_id": SIG, "message": HI},
        400,
        "signature: Missing data for required field.",
    ),
    post(
        "encrypt-unknown-field",
        "/v1/kms/encrypt",
        {"key_id": ENC, "plaintext": HI, "aad": HI},
        400,
        "aad: Unknown field.",
    ),
    post(
        "encrypt-context-not-an-object",
        "/v1/kms/encrypt",
        {"key_id": ENC, "plaintext": HI, "context": HI},
        400,
        "context: must be an object of string keys to string values",
    ),
    post(
        "encrypt-key_id-null",
        "/v1/kms/encrypt",
        {"key_id": None, "plaintext": HI},
        400,
        "key_id: Field may not be null.",
    ),
    *(
        post(
            f"plaintext-{label}",
            "/v1/kms/encrypt",
            {"key_id": ENC, "plaintext": text},
            400,
            f"plaintext: {NOT_BASE64}",
        )
        for label, text in [
            ("not-base64", "***"),
            ("url-safe", "-_-_"),
            ("no-padding", "aGk"),
            ("newline", "aGk=\n"),
            ("space", "aG k="),
        ]
    ),
    post(
        "plaintext-int",
        "/v1/kms/encrypt",
        {"key_id": ENC, "plaintext": 5},
        400,
        "plaintext: must be a base64 string",
    ),
    post(
        "plaintext-non-ascii",
        "/v1/kms/encrypt",
        {"key_id": ENC, "plaintext": "aGé="},
        400,
        "plaintext: must be a base64 string",
    ),
    post(
        "message-not-base64",
        "/v1/kms/sign",
        {"key_id": SIG, "message": "***"},
        400,
        f"message: {NOT_BASE64}",
    ),
    post(
        "signature-not-base64",
        "/v1/kms/verify",
        {"key_id": SIG, "message": HI, "signature": "***"},
        400,
        f"signature: {NOT_BASE64}",
    ),
    post(
        "ciphertext-int",
        "/v1/kms/decrypt",
        {"key_id": ENC, "ciphertext": 5},
        400,
        "ciphertext: Not a valid string.",
    ),
    # The operation does not fit the key's purpose.
    post(
        "encrypt-with-sign-key",
        "/v1/kms/encrypt",
        {"key_id": SIG, "plaintext": HI},
        400,
        f"key {SIG} has purpose sign",
    ),
    post(
        "decrypt-with-sign-key",
        "/v1/kms/decrypt",
        {"key_id": SIG, "ciphertext": HI},
        400,
        f"key {SIG} has purpose sign",
    ),
    post(
        "sign-with-encrypt-key",
        "/v1/kms/sign",
        {"key_id": ENC, "message": HI},
        400,
        f"key {ENC} has purpose encrypt",
    ),
    post(
        "verify-with-encrypt-key",
        "/v1/kms/verify",
        {"key_id": ENC, "message": HI, "signature": HI},
        400,
        f"key {ENC} has purpose encrypt",
    ),
    bare(
        "public-key-of-encrypt-key",
        "GET",
        f"/v1/kms/keys/{ENC}/public-key",
        400,
        f"key {ENC} (AES-256-GCM) has no public key",
    ),
    # Issue 10's endpoints and options.
    post(
        "mac-message-not-base64",
        "/v1/kms/mac",
        {"key_id": ENC, "message": "***"},
        400,
        f"message: {NOT_BASE64}",
    ),
    post(
        "mac-with-encrypt-key",
        "/v1/kms/mac",
        {"key_id": ENC, "message": HI},
        400,
        f"key {ENC} has purpose encrypt",
    ),
    post("mac-unknown-key", "/v1/kms/mac", {"key_id": MISSING, "message": HI}, 404, NOT_FOUND),
    post(
        "mac-verify-without-mac",
        "/v1/kms/mac/verify",
        {"key_id": ENC, "message": HI},
        400,
        "mac: Missing data for required field.",
    ),
    post(
        "mac-verify-version-zero",
        "/v1/kms/mac/verify",
        {"key_id": ENC, "message": HI, "mac": HI, "version": 0},
        400,
        "version: must be between 1 and 2147483647",
    ),
    post(
        "mac-verify-with-sign-key",
        "/v1/kms/mac/verify",
        {"key_id": SIG, "message": HI, "mac": HI},
        400,
        f"key {SIG} has purpose sign",
    ),
    post("random-zero", "/v1/kms/random", {"bytes": 0}, 400, "bytes: must be between 1 and 1024"),
    post(
        "random-too-many",
        "/v1/kms/random",
        {"bytes": 1025},
        400,
        "bytes: must be between 1 and 1024",
    ),
    post("random-bool", "/v1/kms/random", {"bytes": True}, 400, "bytes: must be an integer"),
    post(
        "random-huge",
        "/v1/kms/random",
        {"bytes": 10**100},
        400,
        "bytes: must be between 1 and 1024",
    ),
    post("random-missing", "/v1/kms/random", {}, 400, "bytes: Missing data for required field."),
    post("random-array", "/v1/kms/random", [16], 400, NOT_OBJECT),
    post(
        "sign-scheme-of-another-key-type",
        "/v1/kms/sign",
        {"key_id": SIG, "message": HI, "signing_algorithm": "RSA-PSS-SHA256"},
        400,
        "signing_algorithm for ECDSA-P256 keys must be one of: ECDSA-SHA256",
    ),
    post(
        "sign-scheme-not-a-string",
        "/v1/kms/sign",
        {"key_id": SIG, "message": HI, "signing_algorithm": 5},
        400,
        "signing_algorithm: Not a valid string.",
    ),
    post(
        "sign-prehashed-string",
        "/v1/kms/sign",
        {"key_id": SIG, "message": HI, "prehashed": "true"},
        400,
        "prehashed: must be true or false",
    ),
    post(
        "sign-digest-md5",
        "/v1/kms/sign",
        {"key_id": SIG, "message": HI, "prehashed": True, "digest_algorithm": "MD5"},
        400,
        "digest_algorithm: Must be one of: SHA-256, SHA-384, SHA-512.",
    ),
    post(
        "sign-prehashed-short-digest",
        "/v1/kms/sign",
        {"key_id": SIG, "message": HI, "prehashed": True, "digest_algorithm": "SHA-256"},
        400,
        "a prehashed SHA-256 digest is 32 bytes, got 2",
    ),
    post(
        "verify-version-string",
        "/v1/kms/verify",
        {"key_id": SIG, "message": HI, "signature": HI, "version": "1"},
        400,
        "version: must be an integer",
    ),
    post(
        "decrypt-version-for-aes-key",
        "/v1/kms/decrypt",
        {"key_id": ENC, "ciphertext": HI, "version": 1},
        400,
        "version is only for raw RSA-OAEP ciphertexts; the ciphertexts of AES-256-GCM keys "
        "name their version",
    ),
    # Unknown keys.
    post(
        "encrypt-unknown-key",
        "/v1/kms/encrypt",
        {"key_id": MISSING, "plaintext": HI},
        404,
        NOT_FOUND,
    ),
    post(
        "decrypt-unknown-key",
        "/v1/kms/decrypt",
        {"key_id": MISSING, "ciphertext": HI},
        404,
        NOT_FOUND,
    ),
    post("sign-unknown-key", "/v1/kms/sign", {"key_id": MISSING, "message": HI}, 404, NOT_FOUND),
    post(
        "verify-unknown-key",
        "/v1/kms/verify",
        {"key_id": MISSING, "message": HI, "signature": HI},
        404,
        NOT_FOUND,
    ),
]

# PATCH /v1/kms/keys/<key_id> (issue 8): types, shapes and the label rules. ENC has one version.
PATCH_CASES = [
    patch("patch-unknown-field", {"colour": "red"}, 400, "colour: Unknown field."),
    patch(
        "patch-unknown-and-good-field",
        {"description": "x", "state": "disabled"},
        400,
        "state: Unknown field.",
    ),
    patch("patch-description-int", {"description": 5}, 400, "description: Not a valid string."),
    patch(
        "patch-description-null", {"description": None}, 400, "description: Field may not be null."
    ),
    patch(
        "patch-description-257",
        {"description": "d" * 257},
        400,
        "description must be a string of at most 256 characters",
    ),
    patch("patch-labels-list", {"labels": ["a"]}, 400, "labels: Not a valid mapping type."),
    patch("patch-labels-null", {"labels": None}, 400, "labels: Field may not be null."),
    patch(
        "patch-label-value-int",
        {"labels": {"team": 5}},
        400,
        "labels.team.value: Not a valid string.",
    ),
    patch(
        "patch-33-labels",
        {"labels": {f"l{i}": "v" for i in range(33)}},
        400,
        "labels: at most 32 labels",
    ),
    patch("patch-label-upper", {"labels": {"Team": "a"}}, 400, LABEL_NAMES),
    patch("patch-label-empty-name", {"labels": {"": "a"}}, 400, LABEL_NAMES),
    patch("patch-label-64-chars", {"labels": {"a" * 64: "a"}}, 400, LABEL_NAMES),
    patch("patch-label-colon", {"labels": {"a:b": "a"}}, 400, LABEL_NAMES),
    patch(
        "patch-label-value-257",
        {"labels": {"team": "v" * 257}},
        400,
        "labels: values must be strings of at most 256 characters",
    ),
    patch(
        "patch-min-version-string",
        {"min_decryption_version": "2"},
        400,
        "min_decryption_version: must be an integer",
    ),
    patch(
        "patch-min-version-true",
        {"min_decryption_version": True},
        400,
        "min_decryption_version: must be an integer",
    ),
    patch(
        "patch-min-version-0",
        {"min_decryption_version": 0},
        400,
        "min_decryption_version: must be between 1 and 2147483647",
    ),
    patch(
        "patch-min-version-above-latest",
        {"min_decryption_version": 2},
        400,
        "min_decryption_version must be from 1 (the oldest version kept) to 1 (the latest version)",
    ),
    patch(
        "patch-deletion-allowed-string",
        {"deletion_allowed": "false"},
        400,
        "deletion_allowed: must be true or false",
    ),
    patch(
        "patch-deletion-allowed-0",
        {"deletion_allowed": 0},
        400,
        "deletion_allowed: must be true or false",
    ),
    patch(
        "patch-good-then-bad",
        {"description": "changed?", "labels": {"BAD": "x"}},
        400,
        LABEL_NAMES,
    ),
    Case("patch-not-json", "PATCH", f"/v1/kms/keys/{ENC}", 400, NOT_JSON, b"{"),
    Case(
        "patch-text-plain", "PATCH", f"/v1/kms/keys/{ENC}", 415, NOT_JSON_TYPE, b"{}", "text/plain"
    ),
    create(
        "create-bad-label",
        {"key_id": "bad-label-key", "labels": {"Bad": "x"}},
        400,
        LABEL_NAMES,
    ),
    create(
        "create-description-list",
        {"key_id": "bad-description-key", "description": []},
        400,
        "description: Not a valid string.",
    ),
    post(
        "trim-missing-field",
        f"/v1/kms/keys/{ENC}/trim",
        {},
        400,
        "min_available_version: Missing data for required field.",
    ),
    post(
        "trim-zero",
        f"/v1/kms/keys/{ENC}/trim",
        {"min_available_version": 0},
        400,
        "min_available_version: must be between 1 and 2147483647",
    ),
    post(
        "trim-above-min-decryption-version",
        f"/v1/kms/keys/{ENC}/trim",
        {"min_available_version": 2},
        409,
        "min_available_version must not exceed min_decryption_version (1); raise that first",
    ),
    bare(
        "delete-pending-days-0",
        "DELETE",
        f"/v1/kms/keys/{ENC}?pending_days=0",
        400,
        "pending_days: must be between 1 and 30",
    ),
    bare(
        "delete-pending-days-31",
        "DELETE",
        f"/v1/kms/keys/{ENC}?pending_days=31",
        400,
        "pending_days: must be between 1 and 30",
    ),
    bare(
        "delete-pending-days-abc",
        "DELETE",
        f"/v1/kms/keys/{ENC}?pending_days=abc",
        400,
        "pending_days: must be an integer",
    ),
    bare(
        "list-state-unknown",
        "GET",
        "/v1/kms/keys?state=deleted",
        400,
        "state must be one of: enabled, disabled, pending_deletion",
    ),
    bare(
        "list-label-no-colon",
        "GET",
        "/v1/kms/keys?label=team",
        400,
        "label must be name:value with a valid label name",
    ),
    bare(
        "list-label-bad-name",
        "GET",
        "/v1/kms/keys?label=Team:a",
        400,
        "label must be name:value with a valid label name",
    ),
    bare(
        "cancel-not-pending",
        "POST",
        f"/v1/kms/keys/{ENC}/cancel-deletion",
        409,
        "key is not pending deletion",
    ),
]

# (case id, method, what follows /v1/kms/keys/<key_id>) for every route with a key_id in its path
KEY_ROUTES = [
    ("get", "GET", ""),
    ("delete", "DELETE", ""),
    ("rotate", "POST", "/rotate"),
    ("recreate", "POST", "/recreate"),
    ("public-key", "GET", "/public-key"),
    ("patch", "PATCH", ""),
    ("disable", "POST", "/disable"),
    ("enable", "POST", "/enable"),
    ("trim", "POST", "/trim"),
    ("cancel-deletion", "POST", "/cancel-deletion"),
]
#: A valid body for the routes that need one, so that the case reaches the key lookup.
ROUTE_BODIES = {"patch": {"description": "x"}, "trim": {"min_available_version": 1}}


def key_route(case_id: str, route: str, method: str, path: str, status: int, error: str) -> Case:
    if route in ROUTE_BODIES:
        return Case(case_id, method, path, status, error, raw(ROUTE_BODIES[route]))
    return bare(case_id, method, path, status, error)


URL_CASES = [
    *(
        key_route(
            f"{route}-unknown-key",
            route,
            method,
            f"/v1/kms/keys/{MISSING}{suffix}",
            404,
            NOT_FOUND,
        )
        for route, method, suffix in KEY_ROUTES
    ),
    # Bad key_ids in the URL. "%2F" is decoded before routing, so "../x" matches no route (404);
    # every other bad key_id reaches the view and is refused as such (400).
    *(
        key_route(
            f"{route}-key_id-{label}",
            route,
            method,
            f"/v1/kms/keys/{encoded}{suffix}",
            status,
            error,
        )
        for route, method, suffix in KEY_ROUTES
        for label, encoded, status, error in [
            ("dot-dot-slash", "%2E%2E%2Fx", 404, NO_ROUTE),
            ("dot-dot", "%2E%2E", 400, BAD_KEY_ID),
            ("nul", "a%00b", 400, BAD_KEY_ID),
            ("129-chars", LONG_ID, 400, BAD_KEY_ID),
            ("trailing-newline", "abc%0A", 400, BAD_KEY_ID),
            ("leading-space", "%20abc", 400, BAD_KEY_ID),
        ]
    ),
    # Query strings.
    *(
        bare(f"limit-{label}", "GET", f"/v1/kms/keys?limit={value}", 400, error)
        for label, value, error in [
            ("minus-1", "-1", LIMIT_TYPE),
            ("0", "0", LIMIT_RANGE),
            ("1001", "1001", LIMIT_RANGE),
            ("3.9", "3.9", LIMIT_TYPE),
            ("true", "true", LIMIT_TYPE),
            ("1e30", str(10**30), LIMIT_TYPE),
            ("abc", "abc", LIMIT_TYPE),
            ("empty", "", LIMIT_TYPE),
            ("plus", "%2B5", LIMIT_TYPE),
        ]
    ),
    bare("after-empty", "GET", "/v1/kms/keys?after=", 400, "after: Shorter than minimum length 1."),
    bare("after-dot-dot-slash", "GET", "/v1/kms/keys?after=..%2Fx", 400, BAD_KEY_ID),
    bare("list-unknown-param", "GET", "/v1/kms/keys?colour=red", 400, "colour: Unknown field."),
    bare(
        "public-key-version-0",
        "GET",
        f"/v1/kms/keys/{SIG}/public-key?version=0",
        400,
        "version: must be between 1 and 2147483647",
    ),
    bare(
        "public-key-version-abc",
        "GET",
        f"/v1/kms/keys/{SIG}/public-key?version=abc",
        400,
        "version: must be an integer",
    ),
    bare(
        "public-key-version-2",
        "GET",
        f"/v1/kms/keys/{SIG}/public-key?version=2",
        404,
        f'record not found: key "{SIG}" version 2',
    ),
    # Routes and methods.
    bare("unknown-route", "GET", "/v1/kms/nope", 404, NO_ROUTE),
    bare("root", "GET", "/", 404, NO_ROUTE),
    bare("too-deep", "GET", f"/v1/kms/keys/{ENC}/versions/1/wrapped", 404, NO_ROUTE),
    bare("put-keys", "PUT", "/v1/kms/keys", 405, NO_METHOD),
    bare("get-encrypt", "GET", "/v1/kms/encrypt", 405, NO_METHOD),
    bare("delete-encrypt", "DELETE", "/v1/kms/encrypt", 405, NO_METHOD),
    bare("put-key", "PUT", f"/v1/kms/keys/{ENC}", 405, NO_METHOD),
    bare("post-key", "POST", f"/v1/kms/keys/{ENC}", 405, NO_METHOD),
    bare("get-rotate", "GET", f"/v1/kms/keys/{ENC}/rotate", 405, NO_METHOD),
]


@pytest.fixture(scope="module")
def ciphertext(client: KMSClient) -> Iterator[str]:
    """Three keys for the cases to use, and one real ciphertext under ENC version 1."""
    create_key(client, key_id=ENC, purpose="encrypt")
    create_key(client, key_id=ENC2, purpose="encrypt")
    create_key(client, key_id=SIG, purpose="sign")
    body = expect_json(
        client.post("/v1/kms/encrypt", json={"key_id": ENC, "plaintext": "YWJj"}), 200
    )
    yield body["ciphertext"]
    for key_id in (ENC, ENC2, SIG):
        expect_no_content(client.delete(f"/v1/kms/keys/{key_id}"))


def test_the_database_snapshot_sees_a_write(client: KMSClient, deployment: Deployment) -> None:
    """The control for every case below: a request that does write is caught by the check."""
    key_id = unique_key_id("snapshot")
    with pytest.raises(AssertionError), database_unchanged(deployment.database):
        create_key(client, key_id=key_id)
    with pytest.raises(AssertionError), database_unchanged(deployment.database):
        expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    expect_no_content(client.delete(f"/v1/kms/keys/{key_id}"))


@pytest.mark.parametrize("case", BODY_CASES + PATCH_CASES + URL_CASES, ids=lambda case: case.id)
def test_bad_request_is_refused_and_changes_nothing(
    client: KMSClient, deployment: Deployment, ciphertext: str, case: Case
) -> None:
    with database_unchanged(deployment.database):
        expect_error(case.send(client), case.status, case.error)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _non_canonical(text: str) -> str:
    """Same bytes, but the unused low bits before the padding are not zero."""
    assert text.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = text[-3]
    return text[:-3] + alphabet[alphabet.index(last) + 1] + "=="


# Each maps the real ciphertext text to a corrupted one. "v1:" + 12-byte nonce + 3-byte
# plaintext + 16-byte tag is 34 bytes, so its base64 ends with "==".
CIPHERTEXT_CASES: dict[str, Callable[[str], str]] = {
    "v0": lambda text: b64(b"v0:" + unb64(text)[3:]),
    "v-1": lambda text: b64(b"v-1:" + unb64(text)[3:]),
    "v01": lambda text: b64(b"v01:" + unb64(text)[3:]),
    "v2-not-issued": lambda text: b64(b"v2:" + unb64(text)[3:]),
    "v2147483648": lambda text: b64(b"v2147483648:" + unb64(text)[3:]),
    "no-prefix": lambda text: b64(unb64(text)[3:]),
    "truncated-by-one": lambda text: b64(unb64(text)[:-1]),
    "shorter-than-nonce-and-tag": lambda text: b64(unb64(text)[:30]),
    "tampered-nonce": lambda text: b64(_flip(unb64(text), 3)),
    "tampered-body": lambda text: b64(_flip(unb64(text), 16)),
    "tampered-tag": lambda text: b64(_flip(unb64(text), -1)),
    "non-canonical-base64": _non_canonical,
    "url-safe-base64": lambda text: base64.urlsafe_b64encode(
        unb64(text) + b"\xff\xff\xff"
    ).decode(),
    "trailing-newline": lambda text: text + "\n",
    "not-base64": lambda text: "v1:" + text,
    "non-ascii": lambda text: text[:-3] + "é==",
    "empty": lambda text: "",
}


@pytest.mark.parametrize("corrupt", CIPHERTEXT_CASES.values(), ids=CIPHERTEXT_CASES.keys())
def test_bad_ciphertext_is_invalid_ciphertext(
    client: KMSClient, deployment: Deployment, ciphertext: str, corrupt: Callable[[str], str]
) -> None:
    bad = corrupt(ciphertext)
    assert bad != ciphertext
    with database_unchanged(deployment.database):
        response = client.post("/v1/kms/decrypt", json={"key_id": ENC, "ciphertext": bad})
        expect_error(response, 400, INVALID_CIPHERTEXT)


def test_ciphertext_of_another_key_is_invalid_ciphertext(
    client: KMSClient, deployment: Deployment, ciphertext: str
) -> None:
    with database_unchanged(deployment.database):
        response = client.post("/v1/kms/decrypt", json={"key_id": ENC2, "ciphertext": ciphertext})
        expect_error(response, 400, INVALID_CIPHERTEXT)
        # The control: the very same ciphertext is fine under its own key.
        response = client.post("/v1/kms/decrypt", json={"key_id": ENC, "ciphertext": ciphertext})
        assert unb64(expect_json(response, 200)["plaintext"]) == b"abc"


# -- body size ------------------------------------------------------------------------------
#
# The server answers 413 as soon as it knows a body is too large: from Content-Length before
# reading any of it, or after reading limit + 1 bytes of a chunked body. After the answer is
# written it reads and drops the rest of the body (kms.api.payload.discard_unread_body), so a
# client still sending megabytes gets its 413 and keeps its connection.


def encrypt_body(plaintext: bytes, size: int | None = None) -> bytes:
    """An encrypt request for ENC, padded with trailing whitespace to ``size`` bytes."""
    body = raw({"key_id": ENC, "plaintext": b64(plaintext)})
    if size is not None:
        assert len(body) <= size
        body += b" " * (size - len(body))
    return body


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """As a generator, requests sends it with Transfer-Encoding: chunked and no Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


JSON_HEADERS = {"Content-Type": "application/json"}


def expect_too_large(status: int, content_type: str | None, body: bytes) -> None:
    assert status == 413, (status, body)
    assert content_type == "application/json"
    assert json.loads(body) == {"error": TOO_LARGE}


@pytest.mark.parametrize(
    "length", [2 * MAX_BODY_BYTES, MAX_BODY_BYTES + 1], ids=["2MiB", "limit+1"]
)
def test_declared_length_over_the_limit_is_413_before_the_body_is_sent(
    deployment: Deployment, ciphertext: str, length: int
) -> None:
    context = ssl.create_default_context(cafile=str(deployment.ca_cert))
    context.load_cert_chain(str(deployment.client_cert), str(deployment.client_key))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", deployment.port, context=context, timeout=REQUEST_TIMEOUT_SECONDS
    )
    with database_unchanged(deployment.database):
        try:
            connection.putrequest("POST", "/v1/kms/encrypt")
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", str(length))
            connection.endheaders()
            response = connection.getresponse()
            expect_too_large(response.status, response.getheader("Content-Type"), response.read())
        finally:
            connection.close()


def test_chunked_body_one_byte_over_the_limit_is_413(
    client: KMSClient, deployment: Deployment, ciphertext: str
) -> None:
    body = encrypt_body(b"x" * 1000, MAX_BODY_BYTES + 1)
    session = client.new_session()
    with closing(session), database_unchanged(deployment.database):
        response = client.post(
            "/v1/kms/encrypt", session=session, data=chunks(body), headers=JSON_HEADERS
        )
        assert response.request.headers.get("Transfer-Encoding") == "chunked"
        expect_error(response, 413, TOO_LARGE)
        # What the server left unread (the last byte and the chunk framing) is discarded, not
        # taken for the next request on the same connection.
        page = client.get("/v1/kms/keys", session=session, params={"limit": 1})
        assert isinstance(expect_json(page, 200), list)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_2mib_body_is_never_accepted(
    client: KMSClient, deployment: Deployment, ciphertext: str, chunked: bool
) -> None:
    """The whole 2 MiB is sent: the answer is 413, and the connection stays usable.

    The server reads and drops the rest of the body after answering; without that, closing a
    connection with unread data resets it and the client loses the 413.
    """
    body = encrypt_body(b"x" * 1000, 2 * MAX_BODY_BYTES)
    session = client.new_session()
    with closing(session), database_unchanged(deployment.database):
        for _ in range(3):
            response = client.post(
                "/v1/kms/encrypt",
                session=session,
                data=chunks(body) if chunked else body,
                headers=JSON_HEADERS,
            )
            assert ("Transfer-Encoding" in response.request.headers) is chunked
            expect_error(response, 413, TOO_LARGE)
        page = client.get("/v1/kms/keys", session=session, params={"limit": 1})
        assert isinstance(expect_json(page, 200), list)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_of_exactly_the_limit_is_accepted(
    client: KMSClient, ciphertext: str, chunked: bool
) -> None:
    plaintext = os.urandom(1000)
    body = encrypt_body(plaintext, MAX_BODY_BYTES)
    response = client.post(
        "/v1/kms/encrypt", data=chunks(body) if chunked else body, headers=JSON_HEADERS
    )
    assert ("Transfer-Encoding" in response.request.headers) is chunked
    result = expect_json(response, 200)
    decrypted = client.post(
        "/v1/kms/decrypt", json={"key_id": ENC, "ciphertext": result["ciphertext"]}
    )
    assert unb64(expect_json(decrypted, 200)["plaintext"]) == plaintext


def test_chunked_body_just_under_the_limit_is_read_whole(
    client: KMSClient, ciphertext: str
) -> None:
    # No padding: the body ends with the JSON object's closing brace, so any truncation would
    # either break the JSON or change the plaintext.
    plaintext = os.urandom(760 * 1024)
    body = encrypt_body(plaintext)
    assert MAX_BODY_BYTES - 16 * 1024 < len(body) < MAX_BODY_BYTES
    response = client.post("/v1/kms/encrypt", data=chunks(body), headers=JSON_HEADERS)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    result = expect_json(response, 200)
    decrypted = client.post(
        "/v1/kms/decrypt", json={"key_id": ENC, "ciphertext": result["ciphertext"]}
    )
    assert unb64(expect_json(decrypted, 200)["plaintext"]) == plaintext
