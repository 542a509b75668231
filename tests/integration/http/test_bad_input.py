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

from tests.integration.http.harness import (
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

NOT_JSON = "request body is not valid JSON"
NOT_OBJECT = "request body must be a JSON object"
NOT_JSON_TYPE = "Content-Type must be application/json"
BAD_KEY_ID = "key_id must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
NOT_FOUND = "record not found"
NO_ROUTE = "not found"
NO_METHOD = "method not allowed"
TOO_LARGE = "request body too large"
INVALID_CIPHERTEXT = "invalid ciphertext"
NOT_BASE64 = "must be valid standard base64"
LIMIT_RANGE = "limit: must be between 1 and 1000"
LIMIT_TYPE = "limit: must be an integer"
MAX_BODY_BYTES = 1024 * 1024  # the default server.maxBodyBytes
ALGORITHM_NAMES = (
    "AES-256-GCM, ChaCha20-Poly1305, ECDSA-P256, Ed25519, RSA-2048, RSA-3072, RSA-4096"
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
    create("unknown-purpose", {"purpose": "wrap"}, 400, "purpose must be one of: encrypt, sign"),
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
        {"key_id": ENC, "plaintext": HI, "context": HI},
        400,
        "context: Unknown field.",
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
        f"key {ENC} has purpose encrypt",
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

# (case id, method, what follows /v1/kms/keys/<key_id>) for every route with a key_id in its path
KEY_ROUTES = [
    ("get", "GET", ""),
    ("delete", "DELETE", ""),
    ("rotate", "POST", "/rotate"),
    ("recreate", "POST", "/recreate"),
    ("public-key", "GET", "/public-key"),
]

URL_CASES = [
    *(
        bare(
            f"{route}-unknown-key",
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
        bare(
            f"{route}-key_id-{label}",
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
    bare("public-key-version-2", "GET", f"/v1/kms/keys/{SIG}/public-key?version=2", 404, NOT_FOUND),
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


@pytest.mark.parametrize("case", BODY_CASES + URL_CASES, ids=lambda case: case.id)
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
